"""The export stage: the run's fine-tuned model as a Hugging Face folder with its model card, proven to load and
to answer, and (with `formats: [hf, gguf]`) as one GGUF file with an Ollama Modelfile beside it.

    $SOLO_HOME/runs/<run>/export/<run>/         config, weights, tokenizer and chat template, README.md (the card)
    $SOLO_HOME/runs/<run>/export/<run>.gguf     llama.cpp, Ollama, LM Studio
    $SOLO_HOME/runs/<run>/export/Modelfile      `ollama create <run> -f Modelfile`

The Hugging Face folder is always written: evaluation and `solo serve` read it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from solo.evals.generate import chat_answers
from solo.evals.model import load_model
from solo.export.config import ExportConfig, GgufQuant
from solo.export.gguf import GgufExport, stop_ids, write_gguf
from solo.export.model_card import write_model_card
from solo.export.modelfile import chat_turns, modelfile
from solo.store import RunStore
from solo.tokens.tokenizer import load

MODELFILE = "Modelfile"


def write_gguf_and_modelfile(model_dir: Path, output: Path, quant: GgufQuant, name: str) -> GgufExport:
    """`output` (a .gguf file) from the Hugging Face folder `model_dir`, and the Ollama Modelfile beside it."""
    exported = write_gguf(model_dir, output, quant, name)
    tokenizer = load(model_dir)
    vocab = exported.vocab
    # Every token that ends a generation: the end of a turn first, then of text.
    ends = dict.fromkeys([vocab.eot_id, *stop_ids(model_dir), vocab.eos_id])
    stops = [vocab.tokens[i] for i in ends if i is not None]
    bos = vocab.tokens[vocab.bos_id] if vocab.add_bos and vocab.bos_id is not None else None
    (output.parent / MODELFILE).write_text(modelfile(output.name, chat_turns(tokenizer), stops, bos))
    return exported


def export(model_dir: Path, name: str, config: ExportConfig, output: Path, run: RunStore | None,
           prompt: str, tokens_per_step: Mapping[str, int] | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Export the model in `model_dir` into `output` (the stage's folder) as `name`/ and, per `config`, `name`.gguf
    with a Modelfile; `run`'s manifests fill the model card. Returns the stage's metrics."""
    target = output / name
    shutil.rmtree(target, ignore_errors=True)  # a killed attempt's copy, in the `.partial` folder a rerun reuses
    shutil.copytree(model_dir, target)
    gguf = f"{name}.gguf" if "gguf" in config.formats else None
    write_model_card(target, name, run, tokens_per_step, gguf)
    model, tokenizer = load_model(target)
    [reply] = chat_answers(model, tokenizer, [prompt], 16)
    size = sum(f.stat().st_size for f in target.iterdir())
    log(f"export: {target.name} ({size / 1e6:.1f} MB) loads with transformers; it says {reply!r}")
    metrics = {"model": name, "bytes": size, "parameters": model.num_parameters()}
    if gguf:
        exported = write_gguf_and_modelfile(target, output / gguf, config.quant, name)
        log(f"export: {gguf} ({exported.bytes / 1e6:.1f} MB, {exported.quant}, {exported.tensors} tensors, "
            f"pre-tokenizer {exported.vocab.pre}) and {MODELFILE}: ollama create {name} -f {output / MODELFILE}")
        metrics.update({"gguf_bytes": exported.bytes, "gguf_quant": exported.quant})
    return metrics
