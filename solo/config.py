"""Every setting solo reads: pydantic schemas, loaded from the YAML in configs/.

A config file is validated in full before any work starts; an unknown key or a bad value
fails with the file and the dotted field named. `--set a.b=value` overrides apply on top
of the file, with the value read as YAML (so `--set pretrain.max_steps=10` is an int).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from solo.errors import SoloError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def checkout_root() -> Path:
    """Where relative paths in configs are anchored: the user's checkout, also inside a Ray job,
    which runs from Ray's copy of it (the submitter passes SOLO_CHECKOUT along)."""
    return Path(os.environ.get("SOLO_CHECKOUT") or REPO_ROOT)


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """A stable hash of every setting: what a stage manifest records and compares."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- data


class InputSpec(Schema):
    """One source of raw text. `path: embedded` is the corpus built from this Python's docs."""

    path: str
    format: Literal["auto", "text", "jsonl", "parquet", "json"] = "auto"
    text_field: str = "text"
    id_field: str | None = "id"
    domain: str = "default"
    max_documents: int | None = Field(default=None, ge=1)


class DataConfig(Schema):
    inputs: list[InputSpec] = [InputSpec(path="embedded", domain="python-docs")]
    min_chars: int = Field(default=100, ge=0)
    max_chars: int = Field(default=200_000, ge=1)
    exact_dedup: bool = True
    rows_per_shard: int = Field(default=20_000, ge=1)


# ---------------------------------------------------------------- tokenizer and token shards


class TokenizerConfig(Schema):
    vocab_size: int = Field(default=4096, ge=300, le=1_000_000)
    min_frequency: int = Field(default=2, ge=1)
    sample_bytes: int = Field(default=50_000_000, ge=1000, description="text streamed into BPE training")


class TokenizeConfig(Schema):
    seq_len: int = Field(default=256, ge=8)
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    rows_per_shard: int = Field(default=8192, ge=1)


# ---------------------------------------------------------------- training


class OptimConfig(Schema):
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(default=1.0, ge=0)


class StrategyConfig(Schema):
    """How the model is spread over workers and memory: applied from outside the model."""

    zero_stage: Literal[0, 1, 2, 3] = 3
    offload_optimizer: Literal["none", "cpu"] = "cpu"
    offload_params: Literal["none", "cpu"] = "cpu"
    activation_checkpointing: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _param_offload_needs_stage3(self) -> "StrategyConfig":
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3")
        return self


class TrainConfig(Schema):
    model: Literal["demo", "125m", "350m", "1.3b", "2.7b", "7b"] = "demo"
    workers: int = Field(default=2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    micro_batch: int = Field(default=8, ge=1)
    global_batch: int = Field(default=16, ge=1, description="sequences per optimizer step, whatever the worker count")
    max_steps: int = Field(default=200, ge=1)
    optim: OptimConfig = OptimConfig()
    strategy: StrategyConfig = StrategyConfig()
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=50, ge=1)
    eval_batches: int = Field(default=8, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    max_failures: int = Field(default=3, ge=0, description="worker failures survived by restarting from the last checkpoint")
    seed: int = 0

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        per_step = self.micro_batch * self.workers
        if self.global_batch % per_step:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch × workers ({per_step})"
            )
        return self


class FinetuneConfig(TrainConfig):
    method: Literal["sft"] = "sft"
    data: str = Field(default="embedded", description="'embedded', or a jsonl of OpenAI-style messages")
    max_examples: int | None = Field(default=None, ge=1)
    seq_len: int = Field(default=256, ge=8)
    max_steps: int = 60
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=5)


# ---------------------------------------------------------------- evaluation


EvalTask = Literal["mmlu", "arc_challenge", "gsm8k"]


class CostConfig(Schema):
    """What the run cost: its machine-hours at this draw and price (the report card's last table)."""

    watts: float = Field(default=450.0, gt=0, description="the machine's draw under load; an RTX 4090 board is 450 W")
    price_per_kwh: float = Field(default=0.30, ge=0)
    currency: str = "USD"


class ShotsConfig(Schema):
    """Worked examples before each question, taken in order from the task's dev (MMLU, ARC) or train
    (GSM8K) split, as lm-evaluation-harness does. MMLU is usually reported 5-shot and GSM8K 8-shot."""

    mmlu: int = Field(default=5, ge=0)
    arc_challenge: int = Field(default=0, ge=0)
    gsm8k: int = Field(default=8, ge=0)


class EvalConfig(Schema):
    max_documents: int = Field(default=200, ge=1, description="held-out documents scored for bits per byte")
    prompts: list[str] = ["What does json.dumps do?"]
    max_new_tokens: int = Field(default=48, ge=1)
    # Benchmarks, read from local files (solo.evals). The defaults keep the demo's evaluate stage
    # within seconds on two CPU cores (a fixed 50-question sample; GSM8K's generation left out);
    # numbers to publish set max_questions: null.
    tasks: list[EvalTask] = ["mmlu", "arc_challenge"]
    data_root: str = Field(default="../shared/data", description="benchmark files; relative paths from the repo root")
    shots: ShotsConfig = ShotsConfig()
    max_questions: int | None = Field(default=50, ge=1, description="a fixed seeded sample per task; null: all")
    batch_size: int = Field(default=16, ge=1, description="sequences per forward pass (scoring and generation)")
    gsm8k_max_new_tokens: int = Field(default=256, ge=1)
    seed: int = Field(default=0, description="picks the question sample")
    cost: CostConfig = CostConfig()

    def data_path(self) -> Path:
        return (checkout_root() / Path(self.data_root).expanduser()).resolve()


# ---------------------------------------------------------------- the whole pipeline


class PipelineConfig(Schema):
    run: str = Field(default="demo", pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    pretrain: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvalConfig = EvalConfig()


# ---------------------------------------------------------------- serving


class ServeConfig(Schema):
    model: str | None = Field(default=None, description="an exported Hugging Face folder")
    name: str | None = Field(default=None, description="the model's API name; default: its folder name")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    engine: Literal["auto", "cpu"] = "auto"
    max_new_tokens: int = Field(default=256, ge=1, description="default max_tokens when a request sets none")
    max_concurrent: int = Field(default=16, ge=1, description="sequences the engine decodes in one batch")
    replica_cpus: int = Field(default=1, ge=1, description="cores of the model replica (its torch threads)")
    api_keys_file: str | None = Field(default=None, description="keys, one a line; $SOLO_API_KEYS adds more")
    rate_limit_rpm: int = Field(default=0, ge=0, description="requests a minute per key; 0: no limit")
    max_queue: int = Field(default=256, ge=1, description="generations in flight before the server answers 503")
    max_request_bytes: int = Field(default=1 << 20, ge=1024)


# ---------------------------------------------------------------- loading


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

S = TypeVar("S", bound=Schema)


class ConfigError(SoloError):
    pass


def parse_override(text: str) -> tuple[list[str], object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict, path: list[str], value: object) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _format_errors(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{source}: {field}: {e['msg']}")
    return "; ".join(parts)


def load_config(schema: type[S], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> S:
    """Read YAML (or nothing: the schema's defaults), apply `--set` overrides, validate."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{source}: no such config file")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}".splitlines()[0]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        tree = loaded
    for text in overrides:
        apply_override(tree, *parse_override(text))
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None


def default_config_path(folder: str, name: str = "default") -> Path:
    return CONFIG_DIR / folder / f"{name}.yaml"
