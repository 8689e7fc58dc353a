"""The pipeline: stages in order, each skipped when its manifest matches, resumed when interrupted.

    prepare_data → tokenizer → tokenize → pretrain → finetune → evaluate → export
    data/          tokenizer/  tokens/    pretrain/  sft/       eval/       export/<run>/

A stage's manifest records its config hash and, for each input, the key of the stage that
made it; a changed config therefore reruns that stage and, through the keys, every stage after it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import Field

from solo.config import Schema
from solo.data.config import DataConfig
from solo.errors import SoloError
from solo.evals.config import EvalConfig
from solo.serving.config import ServeConfig
from solo.tokens.config import TokenizeConfig, TokenizerConfig
from solo.train.config import FinetuneConfig, TrainConfig
from solo.runtime import init_ray, launched_rank, wait_for_all_ranks
from solo.store import Manifest, RunStore, partial_folder, read_manifest, staged_output


class PipelineConfig(Schema):
    """The whole pipeline: a run's name and one section per stage."""

    run: str = Field(default="demo", pattern=r"^[A-Za-z0-9_.-]+$")
    """The run's folder under $SOLO_HOME/runs/."""
    data: DataConfig = DataConfig()
    """The data stage."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """The tokenizer stage."""
    tokenize: TokenizeConfig = TokenizeConfig()
    """The tokenize stage."""
    pretrain: TrainConfig = TrainConfig()
    """The pretrain stage."""
    finetune: FinetuneConfig = FinetuneConfig()
    """The finetune stage."""
    evaluate: EvalConfig = EvalConfig()
    """The evaluate stage."""


# Which schema validates the YAML in each folder of configs/.
SCHEMA_BY_FOLDER: dict[str, type[Schema]] = {
    "pipelines": PipelineConfig,
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "tokenize": TokenizeConfig,
    "pretrain": TrainConfig,
    "finetune": FinetuneConfig,
    "eval": EvalConfig,
    "serve": ServeConfig,
}


@dataclass
class StageContext:
    config: PipelineConfig
    run: RunStore
    output: Path                      # the stage's `.partial` folder: write here
    inputs: dict[str, Path] = field(default_factory=dict)  # upstream stage name → its folder

    def log(self, message: str) -> None:
        print(message, flush=True)


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str
    section: str | None                # which part of PipelineConfig configures it
    upstream: tuple[str, ...]
    run: Callable[[StageContext], dict]
    also_reads: tuple[str, ...] = ()   # settings of other sections it depends on, dotted


def model_dir(folder: Path) -> Path:
    """The Hugging Face folder inside a training stage's output, or the folder itself (one of the user's)."""
    return folder / "model" if (folder / "model" / "config.json").is_file() else folder


def run_prepare_data(ctx: StageContext) -> dict:
    from solo.data import stage as data

    return data.prepare(ctx.config.data, ctx.output, progress=ctx.log)


def run_tokenizer(ctx: StageContext) -> dict:
    """BPE on a hash-spread sample of the prepared data's training documents or, with no data stage
    upstream (`jobs.train_tokenizer --input`), of the raw inputs in `config.data.inputs`."""
    import functools

    from solo.tokens import tokenizer as tok

    if "prepare_data" in ctx.inputs:
        documents = functools.partial(tok.prepared_documents, ctx.inputs["prepare_data"] / "data")
    else:
        documents = functools.partial(tok.raw_documents, ctx.config.data.inputs)
    return tok.train_stage(documents, ctx.config.tokenizer, ctx.config.tokenize.val_fraction, ctx.output,
                           progress=ctx.log)


def run_tokenize(ctx: StageContext) -> dict:
    from solo.tokens import tokenizer as tok
    from solo.tokens.shards import tokenize

    cfg = ctx.config.tokenize
    return tokenize(ctx.inputs["prepare_data"] / "data", tok.load(ctx.inputs["tokenizer"]), ctx.output,
                    cfg.seq_len, cfg.val_fraction, cfg.rows_per_shard, progress=ctx.log)


def _val_bytes_per_token(tokens_dir: Path) -> float | None:
    manifest = read_manifest(tokens_dir)
    return manifest.metrics.get("bytes_per_token") if manifest else None


def run_pretrain(ctx: StageContext) -> dict:
    from solo.train.loop import TrainJob, run_training

    tokens = ctx.inputs["tokenize"]
    job = TrainJob(config=ctx.config.pretrain, train_dir=str(tokens / "train"), val_dir=str(tokens / "val"),
                   tokenizer_dir=str(ctx.inputs["tokenizer"]), output_dir=str(ctx.output),
                   val_bytes_per_token=_val_bytes_per_token(tokens))
    return run_training(job)


def run_finetune(ctx: StageContext) -> dict:
    from solo.tokens import tokenizer as tok
    from solo.train.sft import build_sft_rows
    from solo.train.loop import TrainJob, run_training

    cfg = ctx.config.finetune
    rows = build_sft_rows(tok.load(ctx.inputs["tokenizer"]), cfg, ctx.output / "rows")
    ctx.log(f"finetune ({cfg.method}): {rows['conversations']:,} conversations in {rows['train_rows']:,} rows to "
            f"learn from, {rows['val_rows']:,} held out, {rows['skipped']:,} records skipped (rows/report.json)")
    base = model_dir(ctx.inputs["pretrain"])
    if cfg.trains_adapters():
        from solo.train.adapters import check_target_modules

        check_target_modules(base, cfg)
    job = TrainJob(config=cfg, train_dir=str(ctx.output / "rows" / "train"), val_dir=str(ctx.output / "rows" / "val"),
                   tokenizer_dir=str(ctx.inputs["tokenizer"]), output_dir=str(ctx.output), init_model_dir=str(base))
    metrics = {**run_training(job), **rows}
    if cfg.trains_adapters():
        from solo.store import register_adapter

        name = cfg.adapter_name or ctx.config.run
        registered = register_adapter(name, ctx.output / "adapter", base_model=str(base), method=cfg.method,
                                      metrics=metrics)
        ctx.log(f"finetune: adapter {name!r} registered at {registered}")
        metrics["adapter"] = name
    return metrics


def run_evaluate(ctx: StageContext) -> dict:
    """Bits per byte of both models on held-out text; the benchmarks (evaluate.tasks) and sample
    answers on the fine-tuned one, the model the run ships."""
    from solo.evals import bpb as evaluate
    from solo.evals.suite import run_tasks
    from solo.tokens.tokenizer import prepared_documents
    from solo.tokens.shards import is_validation

    cfg = ctx.config.evaluate
    held_out = [text for id_, text, _ in prepared_documents(ctx.inputs["prepare_data"] / "data")
                if is_validation(id_, ctx.config.tokenize.val_fraction)][:cfg.max_documents]
    if not held_out:
        raise SoloError("no held-out documents to evaluate on: raise tokenize.val_fraction or add data")
    metrics: dict = {"held_out_documents": len(held_out)}
    report = ["# Evaluation", "", f"Bits per byte on {len(held_out)} held-out documents.", "",
              "| model | bits per byte | perplexity |", "| --- | ---: | ---: |"]
    for stage in ("pretrain", "finetune"):
        model, tokenizer = evaluate.load_model(model_dir(ctx.inputs[stage]))
        scores = evaluate.bits_per_byte(model, tokenizer, held_out, seq_len=ctx.config.tokenize.seq_len)
        metrics[f"{stage}_bits_per_byte"] = round(scores["bits_per_byte"], 4)
        metrics[f"{stage}_perplexity"] = round(scores["perplexity"], 2)
        report.append(f"| {stage} | {scores['bits_per_byte']:.4f} | {scores['perplexity']:.2f} |")
    tasks = run_tasks(model, tokenizer, cfg, ctx.output, ctx.log)
    if tasks:
        report += ["", "## Benchmarks (fine-tuned model)", "", "| task | shots | questions | accuracy |",
                   "| --- | ---: | ---: | ---: |"]
    for name, result in tasks.items():
        metrics[f"{name}_accuracy"] = result["accuracy"]
        report.append(f"| {name} | {result['settings']['shots']} | {result['n']} | {100 * result['accuracy']:.1f} |")
    report += ["", "## Sample answers (fine-tuned model, greedy)", ""]
    samples = []
    for prompt, reply in zip(cfg.prompts, evaluate.chat_answers(model, tokenizer, list(cfg.prompts), cfg.max_new_tokens)):
        samples.append({"prompt": prompt, "answer": reply})
        report += [f"**{prompt}**", "", f"> {reply}", ""]
    (ctx.output / "metrics.json").write_text(json.dumps({**metrics, "samples": samples}, indent=2) + "\n")
    (ctx.output / "report.md").write_text("\n".join(report) + "\n")
    ctx.log(f"evaluate: bits per byte {metrics['pretrain_bits_per_byte']} pretrained, "
            f"{metrics['finetune_bits_per_byte']} fine-tuned")
    return metrics


def run_export(ctx: StageContext) -> dict:
    """A Hugging Face folder (`LlamaForCausalLM` + tokenizer + chat template), proven to load."""
    from solo.evals import bpb as evaluate

    target = ctx.output / ctx.config.run
    shutil.copytree(model_dir(ctx.inputs["finetune"]), target)
    model, tokenizer = evaluate.load_model(target)
    [reply] = evaluate.chat_answers(model, tokenizer, [ctx.config.evaluate.prompts[0]], 16)
    size = sum(f.stat().st_size for f in target.iterdir())
    ctx.log(f"export: {target.name} ({size / 1e6:.1f} MB) loads with transformers; it says {reply!r}")
    return {"model": ctx.config.run, "bytes": size, "parameters": model.num_parameters()}


STAGES: tuple[Stage, ...] = (
    Stage("prepare_data", "data", "data", (), run_prepare_data),
    # The tokenizer report measures compression on the documents tokenize will hold out.
    Stage("tokenizer", "tokenizer", "tokenizer", ("prepare_data",), run_tokenizer, ("tokenize.val_fraction",)),
    Stage("tokenize", "tokens", "tokenize", ("prepare_data", "tokenizer"), run_tokenize),
    Stage("pretrain", "pretrain", "pretrain", ("tokenize", "tokenizer"), run_pretrain),
    Stage("finetune", "sft", "finetune", ("pretrain", "tokenizer"), run_finetune),
    Stage("evaluate", "eval", "evaluate", ("prepare_data", "tokenize", "pretrain", "finetune"), run_evaluate),
    Stage("export", "export", None, ("finetune", "evaluate"), run_export),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}


def exported_model_dir(run: RunStore, run_name: str) -> Path:
    return run.stage_dir("export") / run_name


def raw_input_keys(config: PipelineConfig) -> dict[str, str]:
    """What identifies the raw inputs: a changed file reruns the data stage."""
    keys = {}
    for spec in config.data.inputs:
        if spec.path == "embedded":
            keys[spec.path] = f"python-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
            continue
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise SoloError(f"input {spec.path} does not exist: pass an existing file or folder, or `embedded`")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        listing = "\n".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
        keys[spec.path] = hashlib.sha256(listing.encode()).hexdigest()[:16]
    return keys


def _config_hash(config: PipelineConfig, stage: Stage) -> str:
    # The export's only setting is the run name (its folder); the others have their own section.
    if stage.section is None:
        return config.run
    fingerprint = getattr(config, stage.section).fingerprint()
    if not stage.also_reads:
        return fingerprint
    read = {dotted: _setting(config, dotted) for dotted in stage.also_reads}
    return hashlib.sha256((fingerprint + json.dumps(read, sort_keys=True)).encode()).hexdigest()[:16]


def _setting(config: PipelineConfig, dotted: str):
    value = config
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def _input_key(folder: Path) -> str:
    """An input's identity: the key of the stage that made it, else (a folder of the user's) its path."""
    manifest = read_manifest(folder)
    return manifest.key() if manifest and manifest.status == "complete" else str(folder.resolve())


def execute(stage: Stage, config: PipelineConfig, run: RunStore, inputs: dict[str, Path], input_keys: dict[str, str],
            final: Path, rank: int | None = None) -> Manifest:
    """Run one stage into `final`, or skip it when its manifest there matches; returns that manifest.

    `rank`: this process's rank when the `deepspeed` launcher started one process per rank (None
    under Ray). Rank 0 owns the stage folder and its manifest; the others wait until it has prepared
    the `.partial` folder, then train in it. Every rank reads the same files, so all skip alike."""
    config_hash = _config_hash(config, stage)
    existing = read_manifest(final)
    if existing and existing.status == "complete" and existing.config_hash == config_hash \
            and existing.inputs == input_keys:
        print(f"↷ {stage.name}: up to date ({final})", flush=True)
        return existing
    manifest = Manifest(stage=stage.name, status="running", config_hash=config_hash, inputs=input_keys,
                        started_at=time.time())
    if rank:
        wait_for_all_ranks()
        manifest.metrics = stage.run(StageContext(config, run, partial_folder(final), inputs))
        return manifest
    print(f"▶ {stage.name}", flush=True)
    with staged_output(final, manifest) as output:
        if rank == 0:
            wait_for_all_ranks()  # the `.partial` folder is ready
        manifest.metrics = stage.run(StageContext(config, run, output, inputs))
    print(f"✓ {stage.name} in {manifest.duration_s:.1f} s → {final}", flush=True)
    return manifest


def run_pipeline(config: PipelineConfig, run: RunStore, until: str | None = None) -> dict[str, Manifest]:
    """Run every stage in order (up to `until`); returns each stage's manifest."""
    done: dict[str, Manifest] = {}
    raw_keys = raw_input_keys(config)  # a missing input fails here, before Ray starts
    init_ray()
    print(f"run {config.run}: {run.root}", flush=True)
    for stage in STAGES:
        inputs = {name: run.stage_dir(STAGE_BY_NAME[name].folder) for name in stage.upstream}
        keys = raw_keys if stage.name == "prepare_data" else {name: done[name].key() for name in stage.upstream}
        done[stage.name] = execute(stage, config, run, inputs, keys, run.stage_dir(stage.folder))
        if stage.name == until:
            break
    return done


def run_stage(name: str, config: PipelineConfig, run: RunStore, inputs: dict[str, Path] | None = None,
              output: Path | None = None, from_raw_inputs: bool = False) -> Manifest:
    """One stage on its own (`python -m jobs.<stage>`): its inputs are the run's upstream stages
    unless `inputs` names other folders, or (`from_raw_inputs`, as the data stage always does) the
    raw files of `config.data.inputs`; it writes to the run's stage folder unless `output` is given."""
    stage = STAGE_BY_NAME[name]
    if from_raw_inputs or name == "prepare_data":
        folders, keys = {}, raw_input_keys(config)
    else:
        folders = {n: run.stage_dir(STAGE_BY_NAME[n].folder) for n in stage.upstream}
        folders.update(inputs or {})
        for upstream, folder in folders.items():
            if not folder.exists():
                raise SoloError(f"{name} reads the output of {upstream}, and there is none at {folder}: run "
                                f"`python -m jobs.{upstream}` first (or the pipeline), or pass the folder to read")
        keys = {n: _input_key(f) for n, f in folders.items()}
    rank = launched_rank()
    if rank is None:
        init_ray()
    elif name != "pretrain":
        raise SoloError(f"{name} runs under Ray only; of the stages, pretrain alone runs under the deepspeed launcher")
    else:
        from solo.train.loop import start_launched

        start_launched(config.pretrain)
    return execute(stage, config, run, folders, keys, output or run.stage_dir(stage.folder), rank)
