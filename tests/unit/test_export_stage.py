"""The export stage and `solo export` on a run: the model card from the run's manifests (and a shorter one without
them), the GGUF file and Modelfile beside the Hugging Face folder, and a fingerprint that follows the settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from gguf import GGUFReader

from solo.cli.main import main
from solo.config import CONFIG_DIR, load_config
from solo.export.config import ExportConfig
from solo.export.model_card import model_card, run_of
from solo.export.stage import export
from solo.pipeline import STAGE_BY_NAME, PipelineConfig, StageContext, _config_hash, _tokens_per_step
from solo.store import Manifest, RunStore, write_manifest


def finished(run: RunStore, stage: str, metrics: dict, duration_s: float = 60.0, inputs: dict | None = None) -> Path:
    folder = run.stage_dir(stage)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, Manifest(stage=stage, status="complete", config_hash="h", inputs=inputs or {},
                                    metrics=metrics, started_at=0.0, finished_at=duration_s, duration_s=duration_s))
    return folder


@pytest.fixture()
def run(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> RunStore:
    """A run as the pipeline leaves it, $SOLO_HOME/runs/mine, its model exported to export/mine/."""
    monkeypatch.setenv("SOLO_HOME", str(tmp_path / "home"))
    run = RunStore.named("mine")
    data = finished(run, "data", {"documents": 900}, inputs={"/home/me/notes": "k1", "embedded": "python-3.11.7"})
    (data / "report.json").write_text(json.dumps({
        "read": 1000, "kept": 900, "kept_bytes": 4_500_000,
        "domains": {"notes": {"documents": 600, "bytes": 3_000_000}, "python": {"documents": 300, "bytes": 1_500_000}},
        "mixing": {"domains": {"notes": {"after": 600}, "python": {"after": 450}}}}))
    finished(run, "tokenize", {"tokens": 1_234_567, "train_rows": 4500, "val_rows": 200, "bytes_per_token": 3.9})
    finished(run, "pretrain", {"step": 200, "loss": 3.21, "val_loss": 3.4, "tokens_per_s": 12345.6,
                               "gpu_peak_gb": 10.5}, duration_s=600.0)
    finished(run, "finetune", {"step": 50, "loss": 2.1, "tokens_per_s": 900.0}, duration_s=120.0)
    evaluate = finished(run, "evaluate", {"finetune_bits_per_byte": 1.4})
    (evaluate / "metrics.json").write_text(json.dumps({"pretrain_bits_per_byte": 1.5, "finetune_bits_per_byte": 1.4,
                                                       "pretrain_perplexity": 30.2, "finetune_perplexity": 25.1}))
    (evaluate / "mmlu").mkdir()
    (evaluate / "mmlu" / "metrics.json").write_text(json.dumps({"accuracy": 0.25, "n": 50, "settings": {"shots": 5}}))
    shutil.copytree(tiny_model_dir, run.stage_dir("export") / "mine")
    return run


def header_and_body(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, header, body = card.split("---\n", 2)
    return yaml.safe_load(header), body


def test_the_card_is_made_from_the_runs_manifests(run):
    card = model_card(run.stage_dir("export") / "mine", "mine", run, {"pretrain": 4096, "finetune": 1024},
                      gguf="mine.gguf")
    header, body = header_and_body(card)
    assert header["license"] == "other" and {"solo", "llama", "gguf"} <= set(header["tags"])
    assert header["datasets"] == ["embedded", "notes"]  # the inputs by name, not by this machine's paths
    assert "/home/me" not in card
    assert "| notes | 600 | 3.00 | 66.7% | 600 |" in body and "| python | 300 | 1.50 | 33.3% | 450 |" in body
    assert "1,234,567 tokens" in body
    assert "| pretraining | 200 | 819,200 | 10.0 | 12,346 | GPU | 3.2100 | 3.4000 |" in body
    assert "| fine-tuning | 50 | 51,200 | 2.0 | 900 | CPU | 2.1000 | — |" in body
    assert "| bits per byte, held-out text (lower is better) | 1.5 | 1.4 |" in body
    assert "| mmlu | 5 | 50 | 25.0% |" in body
    assert "## Intended use and limits" in body and "ollama create mine -f Modelfile" in body


def test_a_folder_from_elsewhere_gets_a_shorter_card(tiny_model_dir):
    header, body = header_and_body(model_card(tiny_model_dir, "tiny"))
    assert "datasets" not in header and "gguf" not in header["tags"]
    assert "## Model" in body and "| LlamaForCausalLM | 1.8M | 4 | 192 | 6 (2) | 512 | 256 | 1,024 |" in body
    for missing in ("## Data", "## Training", "## Evaluation"):
        assert missing not in body
    assert run_of(tiny_model_dir) is None


def test_a_run_with_few_manifests_and_unknown_tokens_per_step(run):
    shutil.rmtree(run.stage_dir("evaluate"))
    (run.stage_dir("data") / "report.json").unlink()
    _, body = header_and_body(model_card(run.stage_dir("export") / "mine", "mine", run))
    assert "## Evaluation" not in body and "| pretraining | 200 | — |" in body
    assert run_of(run.stage_dir("export") / "mine").root == run.root


def test_the_stage_writes_the_folder_the_gguf_and_the_modelfile(run, tmp_path):
    output = tmp_path / "export.partial"
    output.mkdir()
    logged = []
    metrics = export(run.stage_dir("export") / "mine", "mine", ExportConfig(formats=["hf", "gguf"], quant="q8_0"),
                     output, run, "What does json.dumps do?", {"pretrain": 4096}, logged.append)
    assert sorted(p.name for p in output.iterdir()) == ["Modelfile", "mine", "mine.gguf"]
    assert "| pretraining | 200 | 819,200 |" in (output / "mine" / "README.md").read_text()
    reader = GGUFReader(output / "mine.gguf")
    assert reader.fields["general.name"].contents() == "mine" and reader.fields["general.file_type"].contents() == 7
    modelfile = (output / "Modelfile").read_text()
    assert "FROM ./mine.gguf" in modelfile and 'PARAMETER stop "<|end|>"' in modelfile and "TEMPLATE" in modelfile
    assert metrics["gguf_quant"] == "q8_0" and metrics["gguf_bytes"] == (output / "mine.gguf").stat().st_size
    assert any("ollama create mine" in line for line in logged)


def test_the_stage_writes_no_gguf_unless_asked_and_reruns_over_a_killed_attempt(tiny_model_dir, tmp_path):
    (tmp_path / "plain").mkdir()  # what a killed attempt left in the `.partial` folder a rerun reuses
    (tmp_path / "plain" / "config.json").write_text("{")
    (tmp_path / ".plain.gguf.partial-1").write_bytes(b"GGUF")
    export(tiny_model_dir, "plain", ExportConfig(formats=["hf", "gguf"]), tmp_path, None, "Hi", log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "plain", "plain.gguf"]
    for stale in ("Modelfile", "plain.gguf"):
        (tmp_path / stale).unlink()
    metrics = export(tiny_model_dir, "plain", ExportConfig(), tmp_path, None, "Hi", log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"] and "gguf_bytes" not in metrics
    assert (tmp_path / "plain" / "README.md").is_file()


def test_the_fingerprint_follows_formats_quant_and_the_run():
    stage = STAGE_BY_NAME["export"]
    hashes = {_config_hash(config, stage) for config in (
        PipelineConfig(), PipelineConfig(export=ExportConfig(formats=["hf", "gguf"])),
        PipelineConfig(export=ExportConfig(formats=["hf", "gguf"], quant="q8_0")), PipelineConfig(run="other"))}
    assert len(hashes) == 4
    assert load_config(ExportConfig, CONFIG_DIR / "export" / "default.yaml") == ExportConfig()


def test_tokens_per_step_only_where_the_settings_in_hand_ran(tmp_path):
    """The pipeline knows the tokens per step of the training stages whose manifests its settings match."""
    config = PipelineConfig(pretrain={"global_batch": 32}, tokenize={"seq_len": 128})
    run = RunStore(tmp_path / "run")
    for stage in ("tokenize", "pretrain", "finetune"):
        run.stage_dir(stage).mkdir(parents=True)
        recorded = _config_hash(config, STAGE_BY_NAME[stage]) if stage != "finetune" else "another"
        write_manifest(run.stage_dir(stage), Manifest(stage=stage, status="complete", config_hash=recorded,
                                                      started_at=0))
    assert _tokens_per_step(StageContext(config, run, tmp_path / "out")) == {"pretrain": 32 * 128}


def test_a_format_twice_is_a_config_error():
    with pytest.raises(ValueError, match="each format once"):
        ExportConfig(formats=["gguf", "gguf"])


def test_solo_export_takes_a_run_name(run, tmp_path, capsys):
    gguf = tmp_path / "out" / "mine-q8.gguf"
    assert main(["export", "--model", "mine", "--format", "gguf", "--quant", "q8_0", "--output", str(gguf)]) == 0
    assert GGUFReader(gguf).fields["general.file_type"].contents() == 7
    assert "FROM ./mine-q8.gguf" in (gguf.parent / "Modelfile").read_text()
    assert "ollama create mine" in capsys.readouterr().out
    folder = tmp_path / "hf"
    assert main(["export", "--model", "mine", "--output", str(folder)]) == 0
    assert (folder / "model.safetensors").is_file()
    assert "| mmlu | 5 | 50 | 25.0% |" in (folder / "README.md").read_text()
    assert main(["export", "--model", "mine", "--output", str(folder)]) == 2  # never over an existing folder
    assert "already exists" in capsys.readouterr().err
