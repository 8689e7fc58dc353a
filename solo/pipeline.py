"""The pipeline: stages in order, each skipped when its manifest matches, resumed when interrupted.

    data → tokenizer → tokenize → pretrain → finetune → evaluate → export

Each stage has one name: its folder in the run ($SOLO_HOME/runs/<run>/<stage>/), its section of
`PipelineConfig` (`--set <stage>.key=value`), its folder of configs (configs/<stage>/) and its job
(`python -m jobs.<stage>`). A stage's manifest records its config hash and, for each input, the key of
the stage that made it; a changed config therefore reruns that stage and, through the keys, every
stage after it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from solo.config import Schema
from solo.data.config import DataConfig
from solo.data.hf import local_path
from solo.data.read import check_inputs, prepared_documents, raw_documents
from solo.data.stage import prepare
from solo.errors import SoloError
from solo.evals.config import EvalConfig
from solo.evals.stage import evaluate
from solo.evals.suite import check_task_data
from solo.export.config import ExportConfig
from solo.export.stage import export
from solo.runtime import init_ray, launched_rank, wait_for_all_ranks
from solo.serving.config import ServeConfig
from solo.store import Manifest, RunStore, partial_folder, read_manifest, staged_output, write_manifest
from solo.tokens.config import TokenizeConfig, TokenizerConfig
from solo.tokens.shards import is_validation
from solo.tokens.tokenize import tokenize
from solo.tokens.tokenizer import load
from solo.tokens.train_bpe import train_stage
from solo.train.chat_formats import check_conversation_source
from solo.train.config import FinetuneConfig, TrainConfig
from solo.train.finetune import finetune
from solo.train.job import TrainJob
from solo.train.launch import run_training, start_launched


class PipelineConfig(Schema):
    """The whole pipeline: a run's name and one section per stage, named as the stage."""

    run: str = Field(default="demo", pattern=r"^[A-Za-z0-9_.-]+$")
    """The run's folder under $SOLO_HOME/runs/."""
    data: DataConfig = DataConfig()
    """The data stage: what to read and how to clean it."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """The tokenizer stage: BPE on a sample of the data."""
    tokenize: TokenizeConfig = TokenizeConfig()
    """The tokenize stage: rows of tokens, train and validation."""
    pretrain: TrainConfig = TrainConfig()
    """The pretrain stage: a model from scratch."""
    finetune: FinetuneConfig = FinetuneConfig()
    """The finetune stage: SFT, LoRA or QLoRA on conversations."""
    evaluate: EvalConfig = EvalConfig()
    """The evaluate stage: bits per byte, benchmarks, sample answers."""
    export: ExportConfig = ExportConfig()
    """The export stage: the Hugging Face folder and model card, and a GGUF file with an Ollama Modelfile."""


@dataclass
class StageContext:
    config: PipelineConfig
    run: RunStore
    output: Path                      # the stage's `.partial` folder: write here
    inputs: dict[str, Path] = field(default_factory=dict)  # upstream stage name → its folder
    started: float = field(default_factory=time.time)  # when the stage began: a time budget's clock starts here

    def log(self, message: str) -> None:
        print(message, flush=True)


@dataclass(frozen=True)
class Stage:
    name: str                          # its folder in the run, its section of PipelineConfig, its job
    upstream: tuple[str, ...]          # the stages whose folders it reads
    run: Callable[[StageContext], dict]
    also_reads: tuple[str, ...] = ()   # settings of other stages it depends on, dotted

    def settings(self, config: PipelineConfig) -> Schema:
        """Its section of the config."""
        return getattr(config, self.name)


def model_dir(folder: Path) -> Path:
    """The Hugging Face folder inside a training stage's output, or the folder itself (one of the user's)."""
    return folder / "model" if (folder / "model" / "config.json").is_file() else folder


def run_data(ctx: StageContext) -> dict:
    return prepare(ctx.config.data, ctx.output, progress=ctx.log)


def run_tokenizer(ctx: StageContext) -> dict:
    """BPE on a hash-spread sample of the prepared data's training documents or, with no data stage
    upstream (`jobs.tokenizer --input`), of the raw inputs in `config.data.inputs`."""
    if "data" in ctx.inputs:
        data = ctx.inputs["data"] / "data"
        documents = lambda: prepared_documents(data)  # noqa: E731 (a fresh pass on every call)
    else:
        documents = lambda: raw_documents(ctx.config.data.inputs)  # noqa: E731
    return train_stage(documents, ctx.config.tokenizer, ctx.config.tokenize.val_fraction, ctx.output,
                       progress=ctx.log)


def run_tokenize(ctx: StageContext) -> dict:
    cfg = ctx.config.tokenize
    return tokenize(ctx.inputs["data"] / "data", load(ctx.inputs["tokenizer"]), ctx.output,
                    cfg.seq_len, cfg.val_fraction, cfg.rows_per_shard, progress=ctx.log)


def run_pretrain(ctx: StageContext) -> dict:
    tokens = ctx.inputs["tokenize"]
    manifest = read_manifest(tokens)
    job = TrainJob(config=ctx.config.pretrain, train_dir=str(tokens / "train"), val_dir=str(tokens / "val"),
                   tokenizer_dir=str(ctx.inputs["tokenizer"]), output_dir=str(ctx.output),
                   val_bytes_per_token=manifest.metrics.get("bytes_per_token") if manifest else None,
                   started_at=ctx.started)
    return run_training(job)


def run_finetune(ctx: StageContext) -> dict:
    return finetune(ctx.config.finetune, model_dir(ctx.inputs["pretrain"]), ctx.inputs["tokenizer"], ctx.output,
                    adapter_name=ctx.config.run, log=ctx.log, started_at=ctx.started)


def run_evaluate(ctx: StageContext) -> dict:
    """Bits per byte of both models on the documents tokenize held out; the benchmarks and sample answers on
    the fine-tuned one, the model the run ships."""
    cfg = ctx.config.evaluate
    held_out = [text for id_, text, _ in prepared_documents(ctx.inputs["data"] / "data")
                if is_validation(id_, ctx.config.tokenize.val_fraction)][:cfg.max_documents]
    models = {stage: model_dir(ctx.inputs[stage]) for stage in ("pretrain", "finetune")}
    return evaluate(models, held_out, cfg, ctx.config.tokenize.seq_len, ctx.output, ctx.log)


def run_export(ctx: StageContext) -> dict:
    return export(model_dir(ctx.inputs["finetune"]), ctx.config.run, ctx.config.export, ctx.output, ctx.run,
                  ctx.config.evaluate.prompts[0], _tokens_per_step(ctx), ctx.log)


def _tokens_per_step(ctx: StageContext) -> dict[str, int]:
    """Tokens per optimizer step of each training stage, for the model card's tokens seen: only where the settings
    in hand are the ones it ran with, as its manifest's hash says (a stage run as its own job has the defaults)."""
    def ran_with_these(stage: str) -> bool:
        manifest = read_manifest(ctx.run.stage_dir(stage))
        return manifest is not None and manifest.config_hash == _config_hash(ctx.config, STAGE_BY_NAME[stage])

    known = {}
    if ran_with_these("pretrain") and ran_with_these("tokenize"):
        known["pretrain"] = ctx.config.pretrain.global_batch * ctx.config.tokenize.seq_len
    if ran_with_these("finetune"):
        known["finetune"] = ctx.config.finetune.global_batch * ctx.config.finetune.seq_len
    return known


STAGES: tuple[Stage, ...] = (
    Stage(name="data", upstream=(), run=run_data),
    # The tokenizer report measures compression on the documents tokenize will hold out.
    Stage(name="tokenizer", upstream=("data",), run=run_tokenizer, also_reads=("tokenize.val_fraction",)),
    Stage(name="tokenize", upstream=("data", "tokenizer"), run=run_tokenize),
    Stage(name="pretrain", upstream=("tokenize", "tokenizer"), run=run_pretrain),
    Stage(name="finetune", upstream=("pretrain", "tokenizer"), run=run_finetune),
    Stage(name="evaluate", upstream=("data", "tokenize", "pretrain", "finetune"), run=run_evaluate),
    # The export's folder is named by the run.
    Stage(name="export", upstream=("finetune", "evaluate"), run=run_export, also_reads=("run",)),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}

# Which schema validates the YAML in each folder of configs/: a stage's folder holds its section alone.
SCHEMA_BY_FOLDER: dict[str, type[Schema]] = {
    "pipelines": PipelineConfig,
    **{s.name: PipelineConfig.model_fields[s.name].annotation for s in STAGES if s.name in PipelineConfig.model_fields},
    "serve": ServeConfig,
}

# What runs made before each stage had one name called things: its old name → the stage, and its old
# folder → the stage's folder. `migrate_run` renames them, so those runs skip and resume as before.
LEGACY_STAGE_NAMES = {"prepare_data": "data"}
LEGACY_FOLDERS = {"tokens": "tokenize", "sft": "finetune", "eval": "evaluate"}


def migrate_run(run: RunStore) -> None:
    """A run written under the old names, renamed in place: its folders, and in each manifest the stage's name
    and its inputs' names, the keys downstream manifests recorded kept in step."""
    for old, new in LEGACY_FOLDERS.items():
        for suffix in ("", ".partial"):
            source, target = run.root / (old + suffix), run.root / (new + suffix)
            if source.is_dir() and not target.exists():
                source.rename(target)
    rekeyed: dict[str, str] = {}  # an upstream manifest's key before → after
    for stage in STAGES:
        final = run.stage_dir(stage.name)
        for folder in (final, partial_folder(final)):
            manifest = read_manifest(folder)
            if manifest is None:
                continue
            before = manifest.key()
            inputs = {LEGACY_STAGE_NAMES.get(name, name): rekeyed.get(key, key)
                      for name, key in manifest.inputs.items()}
            if inputs != manifest.inputs or manifest.stage != stage.name:
                manifest.stage, manifest.inputs = stage.name, inputs
                write_manifest(folder, manifest)
            if folder == final:
                rekeyed[before] = manifest.key()


def raw_input_keys(config: PipelineConfig) -> dict[str, str]:
    """What identifies the raw inputs: a changed file reruns the data stage."""
    keys = {}
    for spec in config.data.inputs:
        if spec.path == "embedded":
            keys[spec.path] = f"python-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
            continue
        path = local_path(spec.path)  # an hf:// input is downloaded here, before Ray starts
        if not path.exists():
            raise SoloError(f"input {spec.path} does not exist: pass an existing file or folder, or `embedded`")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        listing = "\n".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
        keys[spec.path] = hashlib.sha256(listing.encode()).hexdigest()[:16]
    return keys


def _config_hash(config: PipelineConfig, stage: Stage) -> str:
    fingerprint = stage.settings(config).fingerprint()
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


def check_outside_inputs(config: PipelineConfig, stages: list[str]) -> None:
    """What these stages read from outside the run, looked at before Ray starts, so that a mistake (a missing
    file, a folder that is not a dataset, an unknown split, a benchmark without its files) is one line at once,
    not a failure hours in."""
    if "data" in stages:
        check_inputs(config.data)
    if "finetune" in stages:
        check_conversation_source(config.finetune.data, config.finetune.split)
    if "evaluate" in stages:
        check_task_data(config.evaluate)


def run_pipeline(config: PipelineConfig, run: RunStore, until: str | None = None) -> dict[str, Manifest]:
    """Run every stage in order (up to `until`); returns each stage's manifest."""
    done: dict[str, Manifest] = {}
    raw_keys = raw_input_keys(config)  # a missing or unreadable input fails here, before Ray starts
    last = STAGES.index(STAGE_BY_NAME[until]) if until else len(STAGES) - 1
    check_outside_inputs(config, [stage.name for stage in STAGES[:last + 1]])
    migrate_run(run)
    init_ray()
    print(f"run {config.run}: {run.root}", flush=True)
    for stage in STAGES:
        inputs = {name: run.stage_dir(name) for name in stage.upstream}
        keys = raw_keys if stage.name == "data" else {name: done[name].key() for name in stage.upstream}
        done[stage.name] = execute(stage, config, run, inputs, keys, run.stage_dir(stage.name))
        if stage.name == until:
            break
    return done


def run_stage(name: str, config: PipelineConfig, run: RunStore, inputs: dict[str, Path] | None = None,
              output: Path | None = None, from_raw_inputs: bool = False) -> Manifest:
    """One stage on its own (`python -m jobs.<stage>`): its inputs are the run's upstream stages
    unless `inputs` names other folders, or (`from_raw_inputs`, as the data stage always does) the
    raw files of `config.data.inputs`; it writes to the run's stage folder unless `output` is given."""
    stage = STAGE_BY_NAME[name]
    migrate_run(run)
    raw = from_raw_inputs or name == "data"
    check_outside_inputs(config, ["data", name] if raw else [name])
    if raw:
        folders, keys = {}, raw_input_keys(config)
    else:
        folders = {n: run.stage_dir(n) for n in stage.upstream}
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
        start_launched(config.pretrain)
    return execute(stage, config, run, folders, keys, output or run.stage_dir(name), rank)
