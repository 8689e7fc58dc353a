"""`solo export`: a run's exported model, or any Hugging Face model folder, as a Hugging Face folder with its
model card, or as one GGUF file (llama.cpp, Ollama, LM Studio) with an Ollama Modelfile beside it.

    solo export --model mine --format gguf --quant q8_0 --output mine.gguf
    solo export --model ~/models/other-llama --format hf --output /tmp/other
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from solo.errors import SoloError
from solo.export.config import GgufQuant
from solo.export.model_card import run_of, write_model_card
from solo.export.stage import MODELFILE, write_gguf_and_modelfile
from solo.store import RunStore, exported_model_dir, solo_home

DEFAULT_QUANT: GgufQuant = "f16"


def resolve_model_dir(name_or_path: str) -> tuple[Path, str, RunStore | None]:
    """The Hugging Face folder to export, the model's name, and the run that made it (None for a folder from
    elsewhere): a folder, or the name of a run whose exported model to take, as `solo serve --model` reads it."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SoloError(f"{path} holds no Hugging Face model (no config.json): pass a model folder or a run name")
        path = path.resolve()
        return path, path.name, run_of(path)
    run = RunStore.named(name_or_path)
    exported = exported_model_dir(run, name_or_path)
    if (exported / "config.json").is_file():
        return exported, name_or_path, run
    raise SoloError(f"no model at {name_or_path}, and no run named {name_or_path!r} with an exported model in "
                    f"{solo_home() / 'runs'}: run the pipeline first, or pass a Hugging Face model folder")


def export_hf(model_dir: Path, name: str, run: RunStore | None, output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SoloError(f"{output} already exists: pass a new folder to --output")
    staged = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(model_dir, staged)
    write_model_card(staged, name, run)
    if output.exists():
        output.rmdir()
    staged.rename(output)
    print(f"{output}: the Hugging Face folder with its model card (README.md)\n"
          f"  solo serve --model {output}")


def export_gguf(model_dir: Path, name: str, output: Path, quant: GgufQuant) -> None:
    if output.suffix != ".gguf":
        raise SoloError(f"--output {output}: a GGUF file's name ends in .gguf")
    if output.is_dir():
        raise SoloError(f"--output {output} is a folder: pass the .gguf file to write")
    exported = write_gguf_and_modelfile(model_dir, output, quant, name)
    modelfile = output.parent / MODELFILE
    print(f"{output}: {exported.bytes / 1e6:.1f} MB, {quant}, {exported.tensors} tensors, pre-tokenizer "
          f"{exported.vocab.pre}\n{modelfile}: the Ollama Modelfile beside it\n"
          f"  ollama create {name} -f {modelfile} && ollama run {name}\n"
          f"  llama-server -m {output}      # or: llama-cli -m {output} -cnv")


def export(args: argparse.Namespace) -> None:
    model_dir, name, run = resolve_model_dir(args.model)
    if args.format == "hf":
        if args.quant is not None:
            raise SoloError("--quant sets the GGUF file's weights: pass it with --format gguf")
        export_hf(model_dir, name, run, (args.output or Path(name)).expanduser().resolve())
    else:
        output = (args.output or Path(f"{name}.gguf")).expanduser().resolve()
        export_gguf(model_dir, name, output, args.quant or DEFAULT_QUANT)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="RUN_OR_DIR",
                        help="a run's name (its exported model, as `solo serve --model` takes it) or a Hugging Face "
                             "model folder")
    parser.add_argument("--format", choices=["hf", "gguf"], default="hf",
                        help="hf: a Hugging Face folder with its model card (default); gguf: one GGUF file for "
                             "llama.cpp, Ollama and LM Studio, with an Ollama Modelfile beside it")
    parser.add_argument("--quant", choices=["f32", "f16", "q8_0"],
                        help=f"the GGUF file's weights (default {DEFAULT_QUANT}): f32 exact, f16 half the size, "
                             "q8_0 about a quarter; norms stay f32")
    parser.add_argument("--output", type=Path, metavar="PATH",
                        help="the .gguf file to write (Modelfile goes beside it; default ./NAME.gguf), or for hf "
                             "the new folder (default ./NAME)")


COMMANDS = {"export": (_arguments, export)}
