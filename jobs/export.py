"""The export stage: the run's fine-tuned model as a Hugging Face folder with its model card and, with
`formats: [hf, gguf]`, as one GGUF file with an Ollama Modelfile beside it.

Config: configs/export/default.yaml. The same on a CPU or GPU machine:
    python -m jobs.export --run demo
    python -m jobs.export --run demo --set formats=[hf,gguf] --set quant=q8_0
Writes the run's export/: <run>/ (transformers and vLLM load it; `solo serve --model <run>` serves it; README.md
is its model card), and with gguf <run>.gguf and Modelfile (`ollama create <run> -f Modelfile`).
For a model folder from elsewhere, or one file: `solo export --model DIR --format gguf --output FILE`.
"""

import sys

from solo.cli.jobs import stage_job


def main(argv: list[str] | None = None) -> int:
    return stage_job("export", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
