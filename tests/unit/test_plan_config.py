"""`solo plan --config`: what a training config runs with on given hardware, the same answer `strategy: auto`
gives the job; and the planner's speed model held to the H200 measurements it is fitted to."""

import json
import re
from pathlib import Path

import pytest
import yaml

from solo.cli.main import main
from solo.config import load_config
from solo.train import auto_strategy, planner
from solo.train.config import TrainConfig
from solo.train.job import TrainJob
from solo.train.plan_speed import GPU_MFU

ROOT = Path(__file__).parents[2]
MEASURED = ROOT / "benchmarks/results/stream_vs_zero3.json"
GPU_CONFIGS = {preset: ROOT / f"configs/pretrain/{preset}-gpu.yaml"
               for preset in ("125m", "350m", "1.3b", "2.7b", "7b")}
CONTRACT = {"pick", "engine", "compile", "loss", "tokens_per_step", "micro_batch", "accumulation", "seq_len",
            "vocab_size", "optimizer_threads", "planned_gpu_gb", "planned_host_gb", "planned_nvme_gb",
            "planned_tokens_per_s", "planned_mfu", "fits", "short_of", "hardware", "model", "rows", "nvme_checked"}
PICK = {"zero_stage", "offload_optimizer", "offload_params", "activation_checkpointing", "precision"}


# ---------------------------------------------------------------- the speed model against the H200 rows


def measured_rows():
    """(preset, engine, tokens/s) of every run stream_vs_zero3 recorded, with the settings it ran under."""
    measured = json.loads(MEASURED.read_text())
    rows = [(preset, engine, run[engine]["tokens_per_s"]) for preset, run in measured["runs"].items()
            for engine in ("zero3", "stream") if run[engine]["ok"]]
    return measured, rows


def planned_tokens_per_s(measured: dict, preset: str, engine: str) -> float:
    cores = int(re.search(r"(\d+) CPUs", measured["machine"]).group(1))
    hardware = planner.Hardware(gpu_mem_gb=measured["device_memory_cap_gb"], host_mem_gb=126, gpu="H200",
                                host_cores=cores)
    accumulation = measured["global_batch"] // measured["micro_batch"]
    strategy = (planner.Strategy("deepspeed", 3, "cpu", "cpu", False, "bf16") if engine == "zero3"
                else planner.Strategy("stream", 0, "none", "none", True, "bf16"))
    model = planner.ModelShape.preset(preset, measured["vocab_size"], measured["seq_len"])
    # As they ran: eager, transformers' loss, the stream engine moving fp32 weights twice a micro-batch.
    return planner.estimate(strategy, model, hardware, measured["seq_len"], measured["micro_batch"], accumulation,
                            planner.EAGER, planner.StreamTraffic.per_micro_batch(accumulation)).tokens_per_s


def test_the_speed_model_is_within_30_percent_of_every_measured_gpu_row():
    measured, rows = measured_rows()
    assert measured["device"] == "NVIDIA H200" and rows  # 7 rows: ZeRO-3 at 125m–1.3b, stream at 125m–2.7b
    for preset, engine, tokens_per_s in rows:
        planned = planned_tokens_per_s(measured, preset, engine)
        assert planned == pytest.approx(tokens_per_s, rel=0.30), (preset, engine, planned, tokens_per_s)


def test_the_speed_model_ranks_the_engines_as_measured():
    measured, rows = measured_rows()
    by_preset: dict[str, dict[str, float]] = {}
    for preset, engine, tokens_per_s in rows:
        by_preset.setdefault(preset, {})[engine] = tokens_per_s
    both = {preset: runs for preset, runs in by_preset.items() if len(runs) == 2}
    assert both  # 125m, 350m and 1.3b, where the stream engine measured faster
    for preset, runs in both.items():
        planned = {engine: planned_tokens_per_s(measured, preset, engine) for engine in runs}
        assert max(planned, key=planned.get) == max(runs, key=runs.get), (preset, planned, runs)


def test_the_stream_engine_as_built_moves_less_than_the_engine_measured():
    # Weights twice a step in bf16 and gradients once, against fp32 weights twice a micro-batch: at 4 micro-batches
    # a step that is 4p + 2p bytes against 32p + 8p, so the same constants predict it faster.
    measured, _ = measured_rows()
    hardware = planner.Hardware(gpu_mem_gb=24, host_mem_gb=126, gpu="H200", host_cores=16)
    model = planner.ModelShape.preset("1.3b", 4096, 1024)
    stream = planner.Strategy("stream", 0, "none", "none", True, "bf16")
    old = planner.estimate(stream, model, hardware, 1024, 8, 4, traffic=planner.StreamTraffic.per_micro_batch(4))
    new = planner.estimate(stream, model, hardware, 1024, 8, 4)
    assert new.tokens_per_s > old.tokens_per_s
    assert old.tokens_per_s == pytest.approx(planned_tokens_per_s(measured, "1.3b", "stream"))


# ---------------------------------------------------------------- activations with the chunked loss


def test_a_chunked_loss_holds_one_chunks_logits_and_its_gradients():
    # 125m at 32k vocabulary, 16 × 1,024 tokens, bf16: transformers' loss keeps bf16 logits, their fp32 copy and
    # the fp32 log-softmax, 10 bytes a logit for all 16,384 tokens; the chunked loss 3 fp32 copies of 8,192 tokens'
    # logits, and the fp32 gradients of the head's input (every token) and weight.
    model = planner.ModelShape.preset("125m", 32000, 1024)
    tokens, vocab, hidden = 16 * 1024, 32000, 768
    plain = planner.activation_bytes(model, 1024, 16, False, 2)
    chunked = planner.activation_bytes(model, 1024, 16, False, 2, planner.Kernels(True, "chunked", 8192))
    assert plain - chunked == tokens * vocab * 10 - (3 * 8192 * vocab * 4 + 4 * (tokens + vocab) * hidden)
    assert chunked < plain


# ---------------------------------------------------------------- solo plan --config


def gpu_config(tmp_path: Path, preset: str, seq_len: int, micro_batch: int, global_batch: int, **more) -> Path:
    """A recipe like configs/pretrain/<preset>-gpu.yaml: one GPU, 32k vocabulary, AdamW, strategy auto."""
    settings = {"model": preset, "workers": 1, "device": "cuda", "seq_len": seq_len, "vocab_size": 32000,
                "micro_batch": micro_batch, "global_batch": global_batch, "optim": {"name": "adamw"},
                "strategy": "auto", **more}
    path = tmp_path / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def plan_json(capsys, path, *flags: str) -> dict:
    assert main(["plan", "--config", str(path), "--gpu-mem", "24", "--host-mem", "64", "--json", *flags]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one object


@pytest.fixture(autouse=True)
def cli_env(monkeypatch):
    """`solo plan` names DeepSpeed's accelerator in its own process's environment; undone after each test."""
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)


def assert_trains_whole_on_the_gpu(plan: dict) -> None:
    assert CONTRACT <= set(plan) and set(plan["pick"]) == PICK
    assert plan["pick"] == {"zero_stage": 0, "offload_optimizer": "none", "offload_params": "none",
                            "activation_checkpointing": False, "precision": "bf16"}
    assert plan["engine"] == "deepspeed" and plan["compile"] is True and plan["loss"] in ("chunked", "fused")
    assert plan["tokens_per_step"] >= 65536 and plan["fits"] and plan["short_of"] == ""
    assert plan["planned_gpu_gb"] <= 24 * (1 - planner.MEMORY_MARGIN)
    assert plan["optimizer_threads"] == 1  # fused AdamW on the GPU


@pytest.mark.parametrize("preset, micro_batch", [("125m", 16), ("350m", 8)])
def test_small_models_train_whole_on_a_24_gb_card_in_bf16_compiled(tmp_path, capsys, preset, micro_batch):
    plan = plan_json(capsys, gpu_config(tmp_path, preset, 1024, micro_batch, 64))
    assert_trains_whole_on_the_gpu(plan)
    assert plan["tokens_per_step"] == 64 * 1024 and plan["accumulation"] == 64 // micro_batch
    assert plan["vocab_size"] == 32000 and plan["seq_len"] == 1024 and plan["model"]["preset"] == preset
    assert 0 < plan["planned_mfu"] <= GPU_MFU + 1e-9
    best = max((row for row in plan["rows"] if row["fits"]), key=lambda row: row["tokens_per_s"])
    assert best["label"] == plan["label"] and best["tokens_per_s"] == plan["planned_tokens_per_s"]


def test_2_7b_offloads_or_streams_on_a_24_gb_card(tmp_path, capsys):
    plan = plan_json(capsys, gpu_config(tmp_path, "2.7b", 2048, 2, 64), "--host-cores", "12")
    assert plan["fits"] and plan["tokens_per_step"] == 131072
    assert plan["engine"] == "stream" or plan["pick"]["offload_optimizer"] != "none"
    assert plan["optimizer_threads"] == 12  # the optimizer runs on the host: every core for CPU Adam


def test_7b_trains_from_nvme_on_a_24_gb_card_and_64_gb_of_host_memory(tmp_path, capsys):
    # fp32 master weights and Adam's moments (12 bytes a parameter, 65 GB) on the drive, bf16 weights on the
    # card with activation checkpointing: 14 GB of GPU, 48 GB of host memory (fp32 gradients, swap buffers).
    strategy = {"zero_stage": 3, "offload_optimizer": "nvme", "offload_params": "none", "nvme_path": str(tmp_path),
                "activation_checkpointing": True, "precision": "bf16"}
    plan = plan_json(capsys, gpu_config(tmp_path, "7b", 2048, 1, 64, strategy=strategy))
    assert plan["strategy_source"] == "config" and plan["fits"]
    assert plan["pick"] == {key: strategy[key] for key in PICK}
    assert plan["nvme_checked"] is False and plan["hardware"]["nvme_gb"] is None
    assert plan["planned_nvme_gb"] >= 12 * plan["model"]["parameters"] / planner.GB
    assert plan["compile"] is False and plan["loss"] == "plain"  # ZeRO-3 holds the head's weight in shards
    # With --nvme the drive's space is checked: 50 GB does not hold 65 GB.
    small = plan_json(capsys, gpu_config(tmp_path, "7b", 2048, 1, 64, strategy=strategy), "--nvme", "50")
    assert small["nvme_checked"] is True and not small["fits"] and "NVMe" in small["short_of"]


@pytest.mark.parametrize("preset", list(GPU_CONFIGS))
def test_the_shipped_gpu_recipes_plan_as_the_issue_asks(capsys, preset):
    plan = plan_json(capsys, GPU_CONFIGS[preset])
    assert plan["vocab_size"] == 32000 and plan["model"]["preset"] == preset
    if preset in ("125m", "350m"):
        assert_trains_whole_on_the_gpu(plan)
        return
    assert plan["tokens_per_step"] >= 131072 and plan["seq_len"] == 2048
    if preset in ("2.7b", "7b"):
        assert plan["fits"], (plan["label"], plan["short_of"], plan["planned_host_gb"])
        assert plan["engine"] == "stream" or plan["pick"]["offload_optimizer"] != "none"


def test_when_nothing_fits_the_json_says_so_and_exits_0(tmp_path, capsys):
    # 7b under strategy auto without a drive: the optimizer state fits neither the card nor 90% of 64 GB.
    plan = plan_json(capsys, gpu_config(tmp_path, "7b", 2048, 1, 64))
    assert plan["pick"] is None and plan["fits"] is False and plan["engine"] is None
    assert plan["short_of"] and len(plan["rows"]) == len(planner.strategies(planner.Hardware(24, 64)))
    assert main(["plan", "--config", str(tmp_path / "7b.yaml"), "--gpu-mem", "24", "--host-mem", "64"]) == 0
    assert "nothing fits" in capsys.readouterr().out


def test_set_overrides_the_config_and_a_bad_key_is_one_line(tmp_path, capsys):
    path = gpu_config(tmp_path, "125m", 1024, 16, 64)
    plan = plan_json(capsys, path, "--set", "global_batch=128", "--set", "loop.compile=false")
    assert plan["tokens_per_step"] == 128 * 1024 and plan["accumulation"] == 8 and plan["compile"] is False
    assert main(["plan", "--config", str(path), "--gpu-mem", "24", "--host-mem", "64", "--set", "nonsense=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("solo: ") and "nonsense" in err and "\n" not in err


def test_the_text_form_prints_the_table_and_the_configs_line(tmp_path, capsys):
    path = gpu_config(tmp_path, "125m", 1024, 16, 64)
    assert main(["plan", "--config", str(path), "--gpu-mem", "24", "--host-mem", "64"]) == 0
    out = capsys.readouterr().out
    assert "GPU GB" in out and "tokens/s" in out and "fits?" in out
    assert "64 × 1,024 = 65,536 tokens a step" in out
    assert "strategy: auto picks ZeRO-0 · bf16" in out and "compile" in out


def test_a_finetune_config_is_read_with_the_finetune_schema(tmp_path, capsys):
    path = tmp_path / "sft.yaml"
    path.write_text("method: sft\nmodel: 125m\nworkers: 1\nmicro_batch: 4\nglobal_batch: 8\nseq_len: 512\n"
                    "optim:\n  name: adamw\n")
    plan = plan_json(capsys, path)
    assert plan["seq_len"] == 512 and plan["tokens_per_step"] == 8 * 512 and plan["fits"]
    assert main(["plan", "--config", str(path), "--gpu-mem", "24", "--host-mem", "64"]) == 0
    assert "(FinetuneConfig)" in capsys.readouterr().out


def test_cpu_workers_are_planned_as_the_job_plans_them(tmp_path, capsys):
    path = tmp_path / "cpu.yaml"
    path.write_text("model: demo\nworkers: 2\ndevice: cpu\nmicro_batch: 4\nglobal_batch: 8\n")
    assert main(["plan", "--config", str(path), "--cpu", "--host-mem", "16", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["pick"]["precision"] == "fp32" and plan["pick"]["offload_optimizer"] == "none"
    assert plan["compile"] is False and plan["loss"] == "plain"  # off on the CPU (solo.train.fast_path)
    assert plan["planned_gpu_gb"] is None and plan["planned_mfu"] is None and plan["hardware"]["gpus"] == 2


def test_the_job_and_solo_plan_pick_the_same_strategy(tmp_path, tiny_model_dir, capsys, monkeypatch):
    # strategy: auto in the job and `solo plan --config` both call plan_training: on the same hardware (here a
    # 24 GB card the job is told it has), the same engine and strategy. The job's vocabulary is its tokenizer's.
    path = gpu_config(tmp_path, "1.3b", 64, 4, 64, vocab_size=None)
    hardware = planner.Hardware(gpu_mem_gb=24, host_mem_gb=64)
    monkeypatch.setattr(auto_strategy, "detect_hardware", lambda config: hardware)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "index.json").write_text(json.dumps({"seq_len": 64}))
    config = load_config(TrainConfig, path)
    job = TrainJob(config=config, train_dir=str(tmp_path / "train"), val_dir=None,
                   tokenizer_dir=str(tiny_model_dir), output_dir=str(tmp_path / "out"))
    planned_job, record = auto_strategy.resolve_auto_strategy(job, quiet=True)
    vocab = len(json.loads((Path(tiny_model_dir) / "tokenizer.json").read_text())["model"]["vocab"])
    plan = plan_json(capsys, path, "--set", f"vocab_size={vocab}")
    assert planned_job.config.engine == plan["engine"]
    assert planned_job.config.strategy.model_dump(include=PICK) == plan["pick"]
    assert record["planned_tokens_per_s"] == plan["planned_tokens_per_s"]


@pytest.mark.parametrize("flags, message", [
    (["--json"], "solo: solo plan --json and --set need --config FILE"),
    (["--preset", "125m", "--config", "x.yaml", "--gpu-mem", "24", "--host-mem", "64"],
     "solo: solo plan takes --config FILE or --preset P, not both (the config names its model)"),
    (["--config", "x.yaml", "--gpu-mem", "24", "--host-mem", "64", "--micro-batch", "2"],
     "solo: solo plan --config takes the batch from the config: --set micro_batch=N, --set global_batch=N instead "
     "of --micro-batch and --grad-accum"),
    (["--config", "missing.yaml", "--gpu-mem", "24", "--host-mem", "64"], "solo: missing.yaml: no such config file"),
])
def test_solo_plan_refuses_a_mistake_in_one_line(capsys, flags, message):
    assert main(["plan", *flags]) == 2
    assert capsys.readouterr().err.strip() == message


def test_adapters_train_at_zero_0_as_the_job_trains_them(tmp_path, capsys):
    path = tmp_path / "lora.yaml"
    path.write_text("method: lora\nmodel: 1.3b\nworkers: 1\nmicro_batch: 4\nglobal_batch: 8\nseq_len: 512\n")
    plan = plan_json(capsys, path)
    assert plan["pick"]["zero_stage"] == 0 and plan["pick"]["offload_optimizer"] == "none"
    assert plan["pick"]["precision"] == "bf16" and plan["strategy_source"] == "auto"
    assert plan["compile"] is False and plan["loss"] == "plain"  # adapters train through peft: the plain path
