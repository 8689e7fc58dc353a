"""Settings of the pretrain stage (`pretrain:`, `configs/pretrain/`) and the finetune stage (`finetune:`,
`configs/finetune/`): the model, the batch, the optimizer and how the model is spread over memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from solo.config import UNION_TAG, Schema


class OptimConfig(Schema):
    """The optimizer and its learning-rate schedule (solo.train.schedule). The defaults are the recipe measured
    best on the CPU (docs/training.md#the-default-recipe): Muon + WSD."""

    # AdamW's peak where `lr` is not set: every weight's under adamw; under muon only the embedding's (tied to
    # the head) and the norms', which take a higher rate than whole-model AdamW can.
    DEFAULT_LR: ClassVar[dict[str, float]] = {"adamw": 3e-3, "muon": 2e-2}

    name: Literal["adamw", "muon"] = "muon"
    """muon: Muon (momentum orthogonalized by Newton-Schulz) for the 2-D hidden matrices (attention and MLP
    projections), AdamW for the embedding, the head and the norms. adamw: AdamW for every weight. Muon keeps its
    state beside the weights: ZeRO 0-2 without optimizer offload, full-weight training only."""
    lr: float | None = Field(default=None, gt=0)
    """Peak learning rate of the AdamW parameters, reached at the end of warmup; unset: DEFAULT_LR for `name`
    (3e-3 under adamw, 2e-2 under muon)."""
    muon_lr: float = Field(default=0.04, gt=0)
    """Peak learning rate of Muon's matrices (muon only). Muon's update is orthogonal, of unit spectral scale,
    so its rate is not comparable to Adam's."""
    muon_momentum: float = Field(default=0.95, ge=0, lt=1)
    """Muon's momentum (Nesterov), muon only."""
    schedule: Literal["cosine", "wsd"] = "wsd"
    """After warmup, wsd (warmup, stable, decay): the peak until the last `decay_fraction` of the budget, then a
    straight line down to `min_lr_ratio` of it; cosine: a half cosine down to it over the whole budget."""
    decay_fraction: float = Field(default=0.3, gt=0, le=1)
    """wsd only: the share of the budget (steps or minutes) spent decaying."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """The learning rate at the end of the budget, as a share of the peak."""
    warmup_steps: int = Field(default=20, ge=0)
    """Optimizer steps of linear warmup from peak / warmup_steps to the peak."""
    weight_decay: float = Field(default=0.1, ge=0)
    """Decoupled weight decay, for both optimizers."""
    beta1: float = 0.9
    """Adam's decay of the gradient's running mean."""
    beta2: float = 0.95
    """Adam's decay of the squared gradient's running mean."""
    grad_clip: float = Field(default=1.0, ge=0)
    """Largest global gradient norm; larger gradients are scaled down to it. 0: no clipping. Off with Muon at
    ZeRO 1-2, where DeepSpeed would measure Muon's updates instead of gradients (the worker says so)."""

    @model_validator(mode="before")
    @classmethod
    def _default_lr_for_the_optimizer(cls, data):
        if isinstance(data, dict) and data.get("lr") is None:
            name = data.get("name", cls.model_fields["name"].default)
            return {**data, "lr": cls.DEFAULT_LR.get(name, cls.DEFAULT_LR["adamw"])}
        return data


class StrategyConfig(Schema):
    """How the model is spread over workers and memory: applied from outside the model."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage: 0 replicates everything on each worker, 1 shards the optimizer state, 2 also
    the gradients, 3 also the weights."""
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    """Where the optimizer state lives: on the device, in host memory, or in files under nvme_path."""
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    """Where ZeRO-3 keeps parameters between uses: on the device, in host memory, or in files under nvme_path."""
    nvme_path: str | None = None
    """A writable folder on a fast local drive for `nvme` offload; DeepSpeed swaps tensors to files under it
    (libaio's async I/O, cluster/system-packages.sh installs libaio-dev)."""
    activation_checkpointing: bool = False
    """Keep each layer's input only and recompute the layer in backward: a third more compute, far less memory."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """The compute dtype; master weights stay fp32."""

    @model_validator(mode="after")
    def _param_offload_needs_stage3(self) -> StrategyConfig:
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3")
        return self

    @model_validator(mode="after")
    def _nvme_needs_a_writable_folder(self) -> StrategyConfig:
        if "nvme" not in (self.offload_optimizer, self.offload_params):
            return self
        if self.nvme_path is None:
            raise ValueError("offload to nvme needs nvme_path: a writable folder on a fast local drive")
        folder = Path(self.nvme_path).expanduser()
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"nvme_path {self.nvme_path} is not a writable folder: create it, or name another")
        return self


def muon_problem(engine: str, strategy: StrategyConfig | None, adapters: bool) -> str:
    """Why Muon cannot train with this engine and strategy (None: not yet planned), or "" when it can. Muon
    orthogonalizes each weight matrix's whole update, so it runs where the optimizer state sits beside the
    weights: ZeRO 0-2, nothing offloaded, every weight trained."""
    fix = "use optim.name: adamw"
    if adapters:
        return f"optim.name: muon trains whole weight matrices, not LoRA adapters: {fix}"
    if engine == "stream":
        return f"optim.name: muon cannot run in engine: stream, whose optimizer lives in host memory: {fix}"
    if strategy is not None and strategy.offload_optimizer != "none":
        return (f"optim.name: muon cannot run with offload_optimizer: {strategy.offload_optimizer} (its state must "
                f"stay beside the weights): set offload_optimizer: none, or {fix}")
    if strategy is not None and strategy.zero_stage == 3:
        return ("optim.name: muon cannot run at zero_stage: 3, which splits each weight matrix over the workers: "
                f"use zero_stage 0-2, or {fix}")
    return ""


class LoopConfig(Schema):
    """How the training loop computes: each switch gives the plain computation's result within float tolerance
    (tests/unit/test_loop_switches.py holds each to it) and only changes its speed and memory. `auto`: on where
    it was measured faster (on CUDA; off on the CPU where it measured slower: docs/training.md#the-fast-path);
    solo.train.fast_path resolves it, and `solo plan --config` shows what it resolved to."""

    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model (DeepSpeed at ZeRO 0-2; the stream engine's per-layer compute). auto: on CUDA."""
    loss: Literal["auto", "plain", "chunked", "fused"] = "auto"
    """How the cross-entropy is computed. plain: transformers' (the whole batch's logits, upcast to fp32);
    chunked: the head's matmul and the cross-entropy a chunk of tokens at a time, the gradients computed in
    the same pass, so no whole-batch logits are ever held; fused: Liger kernel's fused linear cross-entropy
    (Triton, CUDA). auto: fused where Liger, Triton and CUDA are present, chunked on CUDA otherwise, plain on
    the CPU. chunked and fused need the head's weight whole (ZeRO 0-2 or engine: stream) and a Llama-style
    model (a decoder under `.model`, the head under `.lm_head`)."""
    loss_chunk_tokens: int = Field(default=8192, ge=64)
    """Tokens per chunk of the chunked cross-entropy: its largest transient is chunk × vocabulary fp32 logits."""
    prefetch: bool | Literal["auto"] = "auto"
    """Copy the next step's rows to the device from pinned memory, without blocking, while this step computes;
    the loop then waits on the device once per optimizer step. auto: on CUDA."""
    fused_adamw: bool | Literal["auto"] = "auto"
    """torch's fused AdamW (one kernel for every tensor) wherever AdamW runs on the device (no optimizer
    offload, not the stream engine). auto: on CUDA."""


# `strategy:` is "auto" or the fields; the discriminator validates against the one the value means, so a
# mistake in the fields is reported alone (not beside "Input should be 'auto'").
StrategyChoice = Annotated[
    Annotated[Literal["auto"], Tag(UNION_TAG + "auto")] | Annotated[StrategyConfig, Tag(UNION_TAG + "fields")],
    Discriminator(lambda value: UNION_TAG + ("auto" if isinstance(value, str) else "fields")),
]

ModelPreset = Literal["demo", "125m", "350m", "1.3b", "2.7b", "7b"]

LossOn = Literal["assistant", "all"]  # which tokens of a conversation fine-tuning learns (solo.train.masking)


class TrainConfig(Schema):
    """Pretraining: a stock Llama from scratch on the tokenize stage's rows."""

    # `workers` stays out of the fingerprint: the global batch is the same on any worker count, so a
    # stage interrupted on N workers and submitted again on M keeps its checkpoints (and is told plainly
    # whether it can resume from them) rather than silently starting afresh.
    # `loop` neither: its switches change the speed, not the result (within float tolerance).
    unfingerprinted: ClassVar[frozenset[str]] = frozenset({"workers", "loop"})

    model: ModelPreset = "demo"
    """The model's size (solo.train.presets: layers, width, heads)."""
    workers: int = Field(default=2, ge=1)
    """Training processes: one per GPU, or one-core CPU workers."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to compute; auto: CUDA when a GPU is visible, else the CPU."""
    micro_batch: int = Field(default=8, ge=1)
    """Sequences per worker per forward pass."""
    global_batch: int = Field(default=16, ge=1)
    """Sequences per optimizer step, whatever the worker count (the rest is gradient accumulation)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps to train for; with `max_minutes` too, the first reached stops the run. Unset and without
    `max_minutes`: DEFAULT_STEPS."""
    max_minutes: float | None = Field(default=None, gt=0)
    """Wall-clock budget in minutes, start-up and evaluations included: the run stops, its learning rate
    annealed, when it is spent. A resumed run goes on with what its checkpoint had left."""
    optim: OptimConfig = OptimConfig()
    """The optimizer and its schedule."""
    strategy: StrategyChoice = "auto"
    """How to spread the model over workers and memory. auto (the default): the fastest that fits this machine,
    chosen by the planner (solo.train.planner, `solo plan`) before training starts; a model that fits trains
    whole on each worker (ZeRO-0), and offload is planned only where it must be. Set the fields to choose."""
    loop: LoopConfig = LoopConfig()
    """How the loop computes: compile, the cross-entropy, prefetching, fused AdamW (solo.train.fast_path)."""
    seq_len: int | None = Field(default=None, ge=8, exclude_if=lambda value: value is None)
    """Tokens per training row this config is made for (the tokenize stage's `seq_len`): the stage refuses rows
    of another length, and `solo plan --config` plans with it. null: whatever the tokenize stage made."""
    vocab_size: int | None = Field(default=None, ge=2, exclude_if=lambda value: value is None)
    """The tokenizer's vocabulary this config is made for (the tokenizer stage's `vocab_size`): the stage refuses
    a tokenizer of another size, and `solo plan --config` plans with it. null: whatever the tokenizer has."""
    vocab_multiple: int = Field(default=64, ge=1)
    """A model built from a preset gets an embedding of the tokenizer's vocabulary rounded up to a multiple of
    this (matmul shapes the GPU's tensor cores take whole); the rows past the vocabulary are never a label, and
    the saved model (export, serving, evaluation) has the tokenizer's vocabulary exactly. 1: no padding."""
    engine: Literal["deepspeed", "stream"] = "deepspeed"
    """deepspeed: ZeRO sharding and offload as `strategy` says; stream: weights and Adam state in host memory,
    streamed to the device a layer at a time (solo.train.stream; full-weight training only, fp32 or bf16;
    ZeRO and offload settings do not apply)."""
    log_every: int = Field(default=10, ge=1)
    """Steps between progress lines (and rows of metrics.csv)."""
    eval_every: int = Field(default=50, ge=1)
    """Steps between validation losses (at a logged step)."""
    eval_batches: int = Field(default=8, ge=1)
    """Global batches of validation rows scored each time."""
    checkpoint_every: int = Field(default=50, ge=1)
    """Steps between checkpoints (and one at the last step)."""
    checkpoint_every_minutes: float | None = Field(default=None, gt=0)
    """Also checkpoint once this many minutes passed since the last save (rank 0's clock decides for all
    workers)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Newest checkpoints kept; older ones are deleted."""
    max_failures: int = Field(default=3, ge=0)
    """Worker failures survived by restarting from the last checkpoint."""
    seed: int = 0
    """Seeds the weights' initialization and the order of the rows."""

    DEFAULT_STEPS: ClassVar[int] = 200

    def trains_adapters(self) -> bool:
        """Whether only LoRA adapters train (on a frozen, possibly 4-bit, base)."""
        return False

    @model_validator(mode="before")
    @classmethod
    def _a_budget(cls, data):
        # A step count only where nothing else says when to stop: with `max_minutes` alone, the clock decides.
        if isinstance(data, dict) and data.get("max_steps") is None and data.get("max_minutes") is None:
            return {**data, "max_steps": cls.DEFAULT_STEPS}
        return data

    @model_validator(mode="after")
    def _muon_keeps_its_state_on_the_device(self) -> TrainConfig:
        if self.optim.name != "muon":
            return self
        problem = muon_problem(self.engine, None if self.strategy == "auto" else self.strategy,
                               self.trains_adapters())
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _stream_trains_every_weight(self) -> TrainConfig:
        if self.engine == "stream" and self.trains_adapters():
            raise ValueError("engine: stream trains every weight (pretraining, method: sft); LoRA and QLoRA "
                             "train with engine: deepspeed")
        if self.engine == "stream" and self.strategy != "auto" and self.strategy.precision == "fp16":
            raise ValueError("engine: stream computes in fp32 or bf16 (fp16 would need loss scaling)")
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        per_step = self.micro_batch * self.workers
        if self.global_batch % per_step:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch × workers ({per_step})"
            )
        return self


class LoraSettings(Schema):
    """Low-rank adapters (peft): W + (alpha / rank) · B·A on each target module, W frozen."""

    rank: int = Field(default=16, ge=1)
    """The rank of A and B."""
    alpha: float = Field(default=32.0, gt=0)
    """The update is scaled by alpha / rank."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapters' input."""
    target_modules: list[str] | None = Field(default=None, min_length=1)
    """Names of the Linear modules that get adapters (the last part of their name: q_proj, down_proj…); unset:
    every Linear module of the decoder layers, found in the model (its attention and MLP projections, whatever
    the architecture calls them), the output head excepted."""


class QuantizationSettings(Schema):
    """How QLoRA stores the frozen base (bitsandbytes 4-bit); unused by `sft` and `lora`."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """The 4-bit data type: NormalFloat4 (QLoRA's) or plain FP4."""
    double_quant: bool = True
    """Quantize the quantization constants too (~0.4 bit per parameter saved)."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The dtype the 4-bit weights are dequantized to for each matmul; auto: bf16 on a GPU, fp32 on CPU."""


class FinetuneOptimConfig(OptimConfig):
    """Fine-tuning's optimizer: AdamW and cosine by default, at a lower peak and a shorter warmup than
    pretraining's (LoRA and QLoRA train adapters, which Muon does not; `method: sft` may take `name: muon`)."""

    DEFAULT_LR: ClassVar[dict[str, float]] = {"adamw": 1e-3, "muon": 1e-3}

    name: Literal["adamw", "muon"] = "adamw"
    """adamw, or muon (`method: sft` only): see OptimConfig.name."""
    schedule: Literal["cosine", "wsd"] = "cosine"
    """See OptimConfig.schedule."""
    warmup_steps: int = Field(default=5, ge=0)
    """Optimizer steps of linear warmup."""


class FinetuneConfig(TrainConfig):
    """Fine-tuning: SFT, LoRA or QLoRA on conversations, with the loss on assistant tokens only."""

    method: Literal["sft", "lora", "qlora"] = "sft"
    """sft: every weight; lora: adapters on a frozen base; qlora: adapters on a 4-bit base."""
    data: str = "embedded"
    """'embedded' (instruction pairs built from this Python's docs), or conversations: a jsonl file (gzipped or
    zstd-compressed too), a JSON list, parquet, arrow, a folder of them, a folder written by save_to_disk, or
    `hf://datasets/OWNER/NAME[/PATH]`."""
    split: str | None = Field(default=None, exclude_if=lambda split: split is None)
    """The split of `data` to read when it is a folder written by DatasetDict.save_to_disk (or a datasets cache
    folder); null: its only split. Left out of the settings' dump while null, so that runs made before this
    setting existed keep their fingerprints."""
    format: Literal["auto", "messages", "alpaca", "sharegpt"] = "auto"
    """The record layout of `data`'s records; auto: detected per record."""
    max_examples: int | None = Field(default=None, ge=1)
    """Read at most this many records; null: all."""
    seq_len: int = Field(default=256, ge=8)
    """Tokens per training row; a longer conversation is skipped, and counted ("N longer than seq_len S")."""
    loss_on: LossOn = "assistant"
    """assistant: the loss on the assistant's turns only (their text, tool calls and end-of-turn token), found by
    the chat template's `{% generation %}` blocks or, in a template without them, by rendering each turn
    (docs/finetuning.md#masking-and-packing); all: on every token of each conversation, for a template whose
    renderings of a conversation's first turns are not prefixes of the whole's."""
    pack: bool = True
    """Several conversations per row, each attending only to itself."""
    lora: LoraSettings = LoraSettings()
    """The adapters (lora, qlora)."""
    quantization: QuantizationSettings = QuantizationSettings()
    """The 4-bit base (qlora)."""
    adapter_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """The adapter's name in $SOLO_HOME/adapters/; default: the run's name."""
    merge: bool = True
    """Also write the adapters merged into a full model (model/)."""
    # Shorter runs than pretraining by default.
    DEFAULT_STEPS: ClassVar[int] = 60
    optim: FinetuneOptimConfig = FinetuneOptimConfig()
    """The optimizer and its schedule."""

    def trains_adapters(self) -> bool:
        return self.method != "sft"
