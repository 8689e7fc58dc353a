"""The evaluate stage: bits per byte on held-out text, MMLU and ARC by log-likelihood, GSM8K by generation.

Config: configs/evaluate/default.yaml (a fixed 50-question sample per task, sized for a CPU).
CPU:
    python -m jobs.evaluate --run demo                              the run's models, as the pipeline does
    python -m jobs.evaluate --model ~/models/other-llama --task mmlu --task gsm8k
GPU (the same; every question, for numbers to publish):
    python -m jobs.evaluate --config configs/evaluate/default.yaml --data /data/benchmarks --set max_questions=null
Tiny: python -m jobs.evaluate --model DIR --task arc_challenge --set max_questions=5
With --run, writes the run's evaluate/ (metrics.json, report.md, <task>/metrics.json); with --model, only
the benchmarks, to --output (default $SOLO_HOME/evals/<model folder>). --data is where the benchmark
files are (default: the config's data_root, ../shared/data from the repo root); a task asked for whose files
are not there stops the job before any model loads, exit 2, naming the path it looked for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from solo.cli.jobs import job_parser
from solo.config import default_config_path, load_config
from solo.errors import SoloError, main_guard
from solo.evals.config import EvalConfig
from solo.evals.model import load_model
from solo.evals.suite import check_task_data, run_tasks
from solo.pipeline import PipelineConfig, run_stage
from solo.store import RunStore, solo_home


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, model=True)
    parser.add_argument("--run", default="default", help="the run whose models to evaluate (without --model)")
    parser.add_argument("--task", dest="tasks", action="append", choices=["mmlu", "arc_challenge", "gsm8k"],
                        help="a benchmark to run (repeatable; default: the config's `tasks`)")
    parser.add_argument("--data", type=Path, help="folder of benchmark files (default: the config's data_root)")
    args = parser.parse_args(argv)
    default = default_config_path("evaluate")
    config = load_config(EvalConfig, args.config or (default if default.is_file() else None), args.overrides)
    update = {}
    if args.tasks:
        update["tasks"] = list(dict.fromkeys(args.tasks))
    if args.data:
        update["data_root"] = str(args.data.expanduser().resolve())
    config = EvalConfig.model_validate({**config.model_dump(), **update})
    if args.model:
        results = evaluate_model(args.model.expanduser().resolve(), config, args.output)
    else:
        results = run_stage("evaluate", PipelineConfig(run=args.run, evaluate=config), RunStore.named(args.run),
                            output=args.output).metrics
    print(json.dumps(results, indent=2))
    return 0


def evaluate_model(model: Path, config, output: Path | None) -> dict:
    """The benchmarks alone, on any Hugging Face causal LM folder that solo's tokenizer loader reads."""
    if not config.tasks:
        raise SoloError("evaluate --model scores benchmarks, and no task is set: pass --task (mmlu, arc_challenge, "
                        "gsm8k)")
    check_task_data(config)  # before the model loads: a missing file is a one-line mistake, found at once
    output = (output or solo_home() / "evals" / model.name).expanduser().resolve()
    loaded, tokenizer = load_model(model)
    results = run_tasks(loaded, tokenizer, config, output, log=_progress)
    _progress(f"evaluate: wrote {output}")
    return {name: {k: r[k] for k in ("accuracy", "n")} for name, r in results.items()}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)   # stdout carries only the JSON result


if __name__ == "__main__":
    sys.exit(main())
