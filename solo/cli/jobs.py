"""What every entry point in jobs/ shares: its arguments, and errors as one line, not a traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from solo.config import default_config_path, load_config
from solo.data.config import DataConfig, InputSpec
from solo.errors import main_guard
from solo.pipeline import PipelineConfig, run_stage
from solo.runtime import launched_rank
from solo.store import RunStore


def job_parser(doc: str, *, inputs: bool = False, data: bool = False, model: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config (default: the job's default in configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set pretrain.max_steps=50 (repeatable)")
    parser.add_argument("--output", type=Path, help="folder to write to (default: in the artifact store)")
    if inputs:
        parser.add_argument("--input", dest="inputs", action="append", default=[], metavar="PATH",
                            help="raw text to read: a file or folder of text, jsonl, json, parquet or arrow, a "
                                 "folder written by save_to_disk, or hf://datasets/OWNER/NAME[/PATH] (repeatable)")
    if data:
        # Kept as typed: a Path would fold finetune's hf://datasets/... into hf:/datasets/...
        parser.add_argument("--data", help="input data folder (finetune: conversations, a file, folder or hf:// path)")
    if model:
        parser.add_argument("--model", type=Path, help="a Hugging Face model folder")
    return parser


def stage_job(stage: str, doc: str, argv: list[str] | None = None, *, data_from: str | None = None,
              model_from: str | None = None) -> int:
    """A pipeline stage as its own job: `--config` holds that stage's settings alone (top-level keys, e.g.
    `--set vocab_size=8000`; default configs/<stage>/default.yaml), `--run` names the run whose upstream
    stages it reads, `--data`/`--model` point it at other folders instead, and `--output` elsewhere to write."""
    @main_guard
    def main() -> int:
        parser = job_parser(doc, inputs=stage in ("data", "tokenizer"),
                            data=data_from is not None or stage == "finetune", model=model_from is not None)
        parser.add_argument("--run", default="default", help="the run to read inputs from and write to")
        # The deepspeed launcher appends it; LOCAL_RANK in the environment says the same.
        parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
        args = parser.parse_args(argv)
        if getattr(args, "inputs", None) and getattr(args, "data", None):
            parser.error("--input and --data both name what to read: pass one")
        schema = PipelineConfig.model_fields[stage].annotation
        default = default_config_path(stage)
        settings = load_config(schema, args.config or (default if default.is_file() else None), args.overrides)
        if stage == "data" and args.inputs:
            settings = settings.model_copy(update={"inputs": [InputSpec(path=p, domain="user") for p in args.inputs]})
        if stage == "finetune" and args.data:
            settings = settings.model_copy(update={"data": args.data})
        # The tokenizer reads raw inputs itself, one domain per input so its report compares them.
        raw = ({"data": DataConfig(inputs=[InputSpec(path=p, domain=Path(p).name) for p in args.inputs])}
               if stage == "tokenizer" and args.inputs else {})
        config = PipelineConfig(run=args.run, **{stage: settings}, **raw)
        inputs = {}
        if data_from and getattr(args, "data", None):
            inputs[data_from] = Path(args.data).expanduser().resolve()
        if model_from and args.model:
            inputs[model_from] = args.model.expanduser().resolve()
            if stage == "finetune":  # a Hugging Face folder carries its own tokenizer and chat template
                inputs["tokenizer"] = inputs[model_from]
        manifest = run_stage(stage, config, RunStore.named(args.run), inputs, args.output, from_raw_inputs=bool(raw))
        if not launched_rank():  # under the deepspeed launcher, rank 0 alone reports
            print(json.dumps(manifest.metrics, indent=2))
        return 0

    return main()
