"""The model card: README.md in Hugging Face's model-card format (a YAML header, then markdown), written into
the exported folder from what the run's stages recorded.

    $SOLO_HOME/runs/<run>/<stage>/manifest.json   each stage's metrics and timings
    data/report.json                               the documents kept, per domain (and the mix)
    evaluate/metrics.json, evaluate/<task>/metrics.json   bits per byte and benchmark accuracy

A model folder from elsewhere (no run around it) gets a shorter card: the model and how to run it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import yaml

from solo.errors import SoloError
from solo.export.gguf import Checkpoint
from solo.store import Manifest, RunStore, read_manifest

TRAINING_STAGES = {"pretrain": "pretraining", "finetune": "fine-tuning"}


def run_of(model_dir: Path) -> RunStore | None:
    """The run a model folder belongs to: `<run>/export/<run>/`, or a training stage's `<run>/<stage>/model/`."""
    model_dir = model_dir.resolve()
    parent = model_dir.parent
    candidates = [parent.parent] if parent.name == "export" or (model_dir.name == "model"
                                                                and parent.name in TRAINING_STAGES) else []
    for root in candidates:
        if any(read_manifest(root / stage) for stage in ("data", "tokenize", *TRAINING_STAGES)):
            return RunStore(root)
    return None


def _finished(run: RunStore | None, stage: str) -> Manifest | None:
    manifest = read_manifest(run.stage_dir(stage)) if run else None
    return manifest if manifest is not None and manifest.status == "complete" else None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _existing_license(model_dir: Path) -> str | None:
    """The license an existing card in the folder declares (a model from elsewhere keeps its own)."""
    card = model_dir / "README.md"
    text = card.read_text(errors="replace") if card.is_file() else ""
    if not text.startswith("---"):
        return None
    try:
        header = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    return str(header["license"]) if isinstance(header, dict) and header.get("license") else None


def _parameters(model_dir: Path, config: dict) -> int | None:
    """Parameters counted from the checkpoint's tensor shapes (a tied output head once); None without weights."""
    try:
        with ExitStack() as files:
            checkpoint = Checkpoint(model_dir, files)
            return sum(math.prod(checkpoint.shape(n)) for n in checkpoint.names()
                       if not (config.get("tie_word_embeddings") and n == "lm_head.weight")
                       and not n.endswith("inv_freq"))
    except SoloError:
        return None


def _fmt(value, spec: str = ",") -> str:
    return "—" if value is None else f"{value:{spec}}"


def _header(license_: str, datasets: list[str], gguf: bool) -> list[str]:
    header = {"license": license_, "library_name": "transformers", "pipeline_tag": "text-generation",
              "tags": ["solo", "llama", "text-generation", "from-scratch", *(["gguf"] if gguf else [])]}
    if datasets:
        header["datasets"] = datasets
    return ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]


def _dataset_names(data: Manifest | None) -> list[str]:
    """The data stage's inputs, by name: the file or folder names it read (not their paths on this machine)."""
    if data is None:
        return []
    return sorted({Path(path).name or path for path in data.inputs})


def _model_section(config: dict, parameters: int | None) -> list[str]:
    architecture = ", ".join(config.get("architectures") or []) or config.get("model_type", "—")
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    size = "—" if parameters is None else f"{parameters / 1e6:,.1f}M"
    return ["## Model", "",
            "| architecture | parameters | layers | hidden | heads (key/value) | feed-forward | context | vocabulary |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {architecture} | {size} | "
            f"{_fmt(config.get('num_hidden_layers'))} | {_fmt(config.get('hidden_size'))} | "
            f"{_fmt(heads)} ({_fmt(kv_heads or heads)}) | {_fmt(config.get('intermediate_size'))} | "
            f"{_fmt(config.get('max_position_embeddings'))} | {_fmt(config.get('vocab_size'))} |", ""]


def _data_section(run: RunStore) -> list[str]:
    report = _json(run.stage_dir("data") / "report.json")
    tokenize = _finished(run, "tokenize")
    if not report and tokenize is None:
        return []
    lines = ["## Data", ""]
    if report:
        lines += [f"{report.get('kept', 0):,} of {report.get('read', 0):,} documents kept after cleaning, quality "
                  f"filters, PII scrubbing, deduplication and decontamination ({report.get('kept_bytes', 0) / 1e6:,.2f}"
                  " MB).", ""]
        mixed = (report.get("mixing") or {}).get("domains") or {}
        domains = report.get("domains") or {}
        if domains:
            total = sum(d.get("bytes", 0) for d in domains.values()) or 1
            lines += ["| domain | documents | MB | share of bytes | after mixing |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            lines += [f"| {name} | {d.get('documents', 0):,} | {d.get('bytes', 0) / 1e6:,.2f} | "
                      f"{100 * d.get('bytes', 0) / total:.1f}% | "
                      f"{_fmt(mixed.get(name, {}).get('after'))} |" for name, d in sorted(domains.items())]
            lines.append("")
    if tokenize is not None:
        metrics = tokenize.metrics
        lines += [f"Tokenized: {_fmt(metrics.get('tokens'))} tokens in {_fmt(metrics.get('train_rows'))} training and "
                  f"{_fmt(metrics.get('val_rows'))} validation rows; {_fmt(metrics.get('bytes_per_token'))} bytes "
                  "per token on held-out text.", ""]
    return lines


def _training_section(run: RunStore, tokens_per_step: Mapping[str, int]) -> list[str]:
    rows = []
    for stage, label in TRAINING_STAGES.items():
        manifest = _finished(run, stage)
        if manifest is None:
            continue
        m = manifest.metrics
        steps = m.get("step")
        seen = steps * tokens_per_step[stage] if steps is not None and stage in tokens_per_step else None
        minutes = manifest.duration_s / 60 if manifest.duration_s is not None else None
        device = "GPU" if "gpu_peak_gb" in m else "CPU"
        rows.append(f"| {label} | {_fmt(steps)} | {_fmt(seen)} | {_fmt(minutes, ',.1f')} | "
                    f"{_fmt(m.get('tokens_per_s'), ',.0f')} | {device} | {_fmt(m.get('loss'), '.4f')} | "
                    f"{_fmt(m.get('val_loss'), '.4f')} |")
    if not rows:
        return []
    return ["## Training", "", "| stage | steps | tokens seen | minutes | tokens/s | device | final loss | "
            "validation loss |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |", *rows, "",
            "Minutes are the stage's wall clock, start-up and evaluations included; tokens/s is the last "
            "logged rate.", ""]


def _evaluation_section(run: RunStore) -> list[str]:
    if _finished(run, "evaluate") is None:
        return []
    folder = run.stage_dir("evaluate")
    summary = _json(folder / "metrics.json")
    tasks = {p.parent.name: _json(p) for p in sorted(folder.glob("*/metrics.json"))}
    lines = ["## Evaluation", "", "| metric | pretrained | fine-tuned |", "| --- | ---: | ---: |"]
    for metric, label in (("bits_per_byte", "bits per byte, held-out text (lower is better)"),
                          ("perplexity", "perplexity per token, held-out text")):
        lines.append(f"| {label} | {_fmt(summary.get(f'pretrain_{metric}'))} | "
                     f"{_fmt(summary.get(f'finetune_{metric}'))} |")
    lines.append("")
    if tasks:
        lines += ["| benchmark (fine-tuned model) | shots | questions | accuracy |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {(r.get('settings') or {}).get('shots', '—')} | {_fmt(r.get('n'))} | "
                  f"{100 * r['accuracy']:.1f}% |" for name, r in tasks.items() if "accuracy" in r]
        lines.append("")
    return lines


def _usage_section(name: str, gguf: str | None) -> list[str]:
    lines = ["## How to run it", "", "```bash", f"solo serve --model {name}      # an OpenAI-compatible API on "
             "127.0.0.1:8000", "```", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             'model = AutoModelForCausalLM.from_pretrained("PATH"); tokenizer = AutoTokenizer.from_pretrained("PATH")',
             "```", ""]
    if gguf:
        lines += [f"`{gguf}` beside this folder is the same model for llama.cpp, Ollama and LM Studio:", "", "```bash",
                  f"ollama create {name} -f Modelfile && ollama run {name}", f"llama-server -m {gguf}", "```", ""]
    return lines


LIMITS = [
    "## Intended use and limits", "",
    "A small language model trained from scratch by one developer with solo: for experiments, research on "
    "training, and as a base to fine-tune on your own tasks. It learnt only from the data above, at a scale far "
    "below today's assistants: expect fluent-looking text that is often wrong, no knowledge of anything the data "
    "did not hold, and whatever biases that data carries. It has no safety tuning. Do not rely on it for facts, "
    "advice (medical, legal, financial) or decisions about people, and review its output before anyone else sees "
    "it. The license above is a placeholder until you set the one your data allows.", ""]
FOREIGN_LIMITS = [
    "## Intended use and limits", "",
    "Those of the model it was exported from: its own card and license say what it was trained on and what it may "
    "be used for. A language model writes fluent text that can be wrong; review its output before relying on it.", ""]


def model_card(model_dir: Path, name: str, run: RunStore | None = None,
               tokens_per_step: Mapping[str, int] | None = None, gguf: str | None = None) -> str:
    """README.md for the Hugging Face folder `model_dir` named `name`; `run`: the run that made it (its manifests
    fill the data, training and evaluation sections); `tokens_per_step`: per training stage, when known, for the
    tokens seen; `gguf`: the GGUF file exported beside it."""
    config = _json(model_dir / "config.json")
    data = _finished(run, "data")
    lines = _header(_existing_license(model_dir) or "other", _dataset_names(data), gguf is not None)
    lines += [f"# {name}", ""]
    if run is not None:
        lines += [f"A Llama language model trained from scratch with solo, run `{run.root.name}`: pretrained on the "
                  "data below, then fine-tuned on conversations (loss on the assistant's turns).", ""]
    else:
        lines += ["A language model exported by solo. No solo run recorded how it was trained, so this card says "
                  "only what its folder holds: see where it came from for its data, training and evaluation.", ""]
    lines += _model_section(config, _parameters(model_dir, config))
    if run is not None:
        lines += _data_section(run)
        lines += _training_section(run, tokens_per_step or {})
        lines += _evaluation_section(run)
    lines += _usage_section(name if run is not None else "PATH", gguf)
    lines += LIMITS if run is not None else FOREIGN_LIMITS
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(model_dir: Path, name: str, run: RunStore | None = None,
                     tokens_per_step: Mapping[str, int] | None = None, gguf: str | None = None) -> Path:
    card = model_card(model_dir, name, run, tokens_per_step, gguf)
    path = model_dir / "README.md"
    path.write_text(card)
    return path
