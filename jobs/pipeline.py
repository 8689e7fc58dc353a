"""Run the whole pipeline: raw text in, a served-ready model out.

data → tokenizer → tokenize → pretrain → finetune → evaluate → export, each stage
skipped when its manifest matches and resumed when it was interrupted.

CPU (this machine, the embedded corpus, a few minutes):
    python -m jobs.pipeline --config configs/pipelines/demo.yaml
    ray job submit --working-dir . -- python -m jobs.pipeline --config configs/pipelines/demo.yaml
GPU (one card; set `pretrain.model`, batch and steps for it, or run the stages with a ready recipe for a 24 GB
card, configs/pretrain/{125m,350m,1.3b,2.7b,7b}-gpu.yaml: `python -m jobs.pretrain --help`):
    python -m jobs.pipeline --config configs/pipelines/demo.yaml --set pretrain.device=cuda --set pretrain.workers=1 \
        --set pretrain.model=125m --set tokenizer.vocab_size=32000 --set tokenize.seq_len=1024
Your own text:
    python -m jobs.pipeline --input ~/notes --input corpus.jsonl --set run=notes
"""

from __future__ import annotations

import sys

from solo.cli.jobs import job_parser
from solo.config import default_config_path, load_config
from solo.data.config import InputSpec
from solo.errors import main_guard
from solo.pipeline import LEGACY_STAGE_NAMES, STAGES, PipelineConfig, run_pipeline
from solo.report import write_report
from solo.store import RunStore, exported_model_dir


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__, inputs=True)
    parser.add_argument("--until", choices=[*(s.name for s in STAGES), *LEGACY_STAGE_NAMES],
                        help="stop after this stage")
    args = parser.parse_args(argv)
    config = load_config(PipelineConfig, args.config or default_config_path("pipelines", "demo"), args.overrides)
    if args.inputs:
        specs = [InputSpec(path=p, domain="user") for p in args.inputs]
        config = config.model_copy(update={"data": config.data.model_copy(update={"inputs": specs})})
    run = RunStore(args.output) if args.output else RunStore.named(config.run)
    run_pipeline(config, run, until=LEGACY_STAGE_NAMES.get(args.until, args.until))
    print(f"report card: {write_report(run, config.evaluate)}", flush=True)
    if args.until in (None, "export"):
        model = exported_model_dir(run, config.run)
        print(f"\nmodel ready: {model}\nserve it:    solo serve --model {model}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
