"""What the planner (solo.train.planner) plans over: the hardware, a strategy, how the loop computes, what the
stream engine moves, and the model's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from solo.errors import SoloError
from solo.train.hardware import PEAK_TFLOPS
from solo.train.presets import PRESETS, flops_per_token, llama_config, parameter_count

if TYPE_CHECKING:
    from transformers import LlamaConfig

HOST_CORES = 8  # cores running CPU Adam on a GPU machine when not told (a home desktop); `--host-cores` sets it
DEFAULT_GPU = "RTX 4090"
# Fitted, with solo.train.plan_speed's constants, to benchmarks/results/stream_vs_zero3.json (one H200's host):
PCIE_GBPS = 14.0  # effective host↔device GB/s of offload and streaming traffic: the stream rows moved 40 bytes a
#                   parameter a step (fp32 weights in twice a micro-batch, bf16 gradients out) at 9.7–10.9 GB/s all
#                   told (2.7b: 89 GB in 9.2 s), plan_speed.LAYER_PASS_SECONDS taking part of that time; ZeRO-3's
#                   18 bytes a parameter fit the same rate. A PCIe 4.0 ×16 slot peaks near 25 GB/s pinned: in reach


def element_bytes(precision: str) -> int:
    """Bytes of one element in the compute dtype."""
    return 4 if precision == "fp32" else 2


@dataclass(frozen=True)
class Hardware:
    gpu_mem_gb: float | None  # None: no GPU, the workers train on host cores
    host_mem_gb: float
    nvme_gb: float | None = None
    gpus: int = 1  # GPUs on the machine (one worker each); without a GPU, worker processes of one core each
    gpu: str = DEFAULT_GPU  # a key of solo.train.hardware.PEAK_TFLOPS
    pcie_gbps: float = PCIE_GBPS
    host_cores: int = HOST_CORES

    def check(self) -> None:
        for name, value in (("GPU memory", self.gpu_mem_gb), ("host memory", self.host_mem_gb),
                            ("NVMe space", self.nvme_gb), ("PCIe bandwidth", self.pcie_gbps)):
            if value is not None and not value > 0:
                raise SoloError(f"{name} must be a positive number of GB, not {value:g}")
        if self.gpus < 1 or self.host_cores < 1:
            raise SoloError(f"GPUs (or CPU workers) and host cores must be at least 1, not {self.gpus} and "
                            f"{self.host_cores}")
        if self.gpu_mem_gb is not None and self.gpu not in PEAK_TFLOPS:
            raise SoloError(f"unknown GPU {self.gpu!r}: one of {', '.join(PEAK_TFLOPS)}")


@dataclass(frozen=True)
class Strategy:
    engine: str  # deepspeed | stream
    zero_stage: int
    offload_optimizer: str
    offload_params: str
    activation_checkpointing: bool
    precision: str

    def label(self) -> str:
        if self.engine == "stream":
            return f"stream (layers from host) · {self.precision}"
        parts = [f"ZeRO-{self.zero_stage}"]
        if self.offload_optimizer != "none":
            parts.append(f"optimizer→{self.offload_optimizer}")
        if self.offload_params != "none":
            parts.append(f"params→{self.offload_params}")
        if self.activation_checkpointing:
            parts.append("ckpt")
        return " · ".join(parts + [self.precision])

    def offloads(self) -> int:
        return (self.offload_optimizer != "none") + (self.offload_params != "none")


@dataclass(frozen=True)
class Kernels:
    """How the loop computes, as far as speed and memory go: solo.train.fast_path.Switches resolved for a strategy
    (`compile`, `loss`, `loss_chunk_tokens`)."""

    compiled: bool = False
    loss: str = "plain"  # plain: the whole micro-batch's logits; chunked | fused: one chunk's at a time
    loss_chunk_tokens: int = 8192


EAGER = Kernels()


@dataclass(frozen=True)
class StreamTraffic:
    """What the stream engine moves over PCIe in one optimizer step, and what it keeps for backward."""

    weight_trips: float  # times each decoder-layer weight goes to the GPU in a step
    weight_bytes: int  # bytes a weight takes on the way (4: fp32 master; 2: a pre-packed bf16 copy)
    gradient_trips: float  # times each gradient comes back in a step
    gradient_bytes: int  # bytes a gradient takes on the way back (4: summed over the step in fp32; 2: bf16)
    embedding_trips: float  # times the tied embedding goes to the GPU in a step (0: it stays there)
    step_wide: bool  # a layer on the GPU runs every micro-batch of the step: all their boundaries kept

    @classmethod
    def once_per_step(cls) -> StreamTraffic:
        """The engine as built (solo/train/stream.py): every micro-batch of the step goes through a layer while it
        is on the GPU, so a layer comes once for forward and once for backward's recompute and backward, in bf16
        from pre-packed pinned buffers; embedding, norms and head stay on the GPU; a layer's gradients, summed over
        the step's micro-batches in fp32 on the GPU, return once in fp32 (what the host adds them into)."""
        return cls(weight_trips=2, weight_bytes=2, gradient_trips=1, gradient_bytes=4, embedding_trips=0,
                   step_wide=True)

    @classmethod
    def per_micro_batch(cls, accumulation: int) -> StreamTraffic:
        """The engine the H200 rows measured: every fp32 weight in for each micro-batch's forward and again for its
        backward, the tied embedding three times a micro-batch, gradients out after each."""
        # Gradients went back in the compute dtype: bf16 in those rows.
        return cls(weight_trips=2 * accumulation, weight_bytes=4, gradient_trips=accumulation, gradient_bytes=2,
                   embedding_trips=3 * accumulation, step_wide=False)


@dataclass(frozen=True)
class ModelShape:
    name: str
    parameters: int
    flops_per_token: float
    vocab: int
    hidden: int
    kv_dim: int
    intermediate: int
    layers: int
    largest_module: int  # DeepSpeed's largest_layer_params: the most parameters one module holds itself
    largest_unit: int  # the stream engine's largest unit: the embedding (tied head) or a decoder layer
    tied_embeddings: bool

    @classmethod
    def of(cls, name: str, config: LlamaConfig, seq_len: int) -> ModelShape:
        h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
        params = parameter_count(config)
        per_layer = (params - v * h * (1 if config.tie_word_embeddings else 2) - h) // layers
        return cls(name, params, flops_per_token(config, seq_len), v, h,
                   config.num_key_value_heads * (h // config.num_attention_heads), config.intermediate_size, layers,
                   largest_module=max(v * h, h * config.intermediate_size), largest_unit=max(v * h + h, per_layer),
                   tied_embeddings=config.tie_word_embeddings)

    @property
    def layer_parameters(self) -> int:
        """The parameters of the decoder layers (what the stream engine streams), all layers together."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return self.layers * (2 * h * h + 2 * kv * h + 3 * i * h + 2 * h)

    def tensor_sizes(self) -> list[int]:
        """Each parameter tensor's elements, as transformers' Llama holds them: the embedding; per layer
        q, k, v, o, gate, up, down and two norms; the final norm; the head unless tied."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        layer = [h * h, kv * h, kv * h, h * h, i * h, i * h, h * i, h, h]
        return [self.vocab * h, *layer * self.layers, h, *([] if self.tied_embeddings else [self.vocab * h])]

    @classmethod
    def preset(cls, preset: str, vocab: int, seq_len: int) -> ModelShape:
        if preset not in PRESETS:
            raise SoloError(f"unknown preset {preset!r}: one of {', '.join(PRESETS)}")
        return cls.of(preset, llama_config(preset, vocab_size=vocab, seq_len=seq_len), seq_len)
