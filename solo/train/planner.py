"""Will it fit, and how fast? Memory and tokens/s of every training strategy for a model on given hardware.

`solo plan --preset 7b --gpu-mem 24 --host-mem 64` prints the table; `strategy: auto` in a training
config asks `resolve_auto_strategy` for the fastest strategy that fits the machine it runs on.

Model states (weights, gradients, Adam) come from DeepSpeed's own estimators where it has them
(ZeRO-2 and ZeRO-3, CPU offload: `estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`); stage 0, stage 1 without offload, NVMe offload, fp32 and
the stream engine use our own formulas, each marked "own" below. Activations and DeepSpeed's gradient
reduce bucket, which its estimators leave out, are always our own count. Speed is FLOPs per token
(solo.train.presets.flops_per_token) over an assumed achievable fraction of the peak, slowed by what offload
moves over PCIe, NVMe and between GPUs. Every figure that is an assumption is a named constant here with
where it comes from; none is measured on a GPU yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from solo.errors import SoloError
from solo.train.engines import REDUCE_BUCKET_ELEMENTS
from solo.train.hardware import PEAK_TFLOPS
from solo.train.presets import PRESETS, flops_per_token, llama_config, parameter_count
from solo.train.stream import host_bytes_per_parameter

if TYPE_CHECKING:
    from transformers import LlamaConfig


GB = 1024**3  # GiB, as torch reports device memory and the training loop its peaks (host_peak_gb)

# ---------------------------------------------------------------- assumptions

MEMORY_MARGIN = 0.10  # fits: at most 90% of a memory, for allocator fragmentation and what no formula counts
CUDA_CONTEXT_GB = 0.8  # CUDA context, cuBLAS workspace and NCCL buffers: typically 0.5–1 GB before any tensor
WORKER_BASELINE_GB = 0.63  # a Ray Train worker's RSS without a real model (Python, torch, transformers' Llama,
#                            DeepSpeed and its CPU Adam op, TensorBoard, Ray, a first forward and backward): 0.625 GB
#                            measured by benchmarks/planner_vs_measured.py's probe
DEEPSPEED_BUFFER_FACTOR = 1.5  # DeepSpeed's estimators' additional_buffer_factor default, on our formulas too
GPU_MFU = 0.35  # achievable model-FLOPs utilization of stock transformers Llama + DeepSpeed, bf16, nothing offloaded:
#                 below nanochat's 41–46% on H100 (the figure issue 5 quotes) since no kernel is fused; an assumption
#                 until the GPU benchmark measures it
ZERO3_EFFICIENCY = 0.91  # ZeRO-3's gathers and releases per layer: it ran at 0.92 and 0.91 of ZeRO-0's tokens/s
#                          on 1 and 2 CPU workers (benchmarks/results/train_overhead.md), our only measure of its cost
RECOMPUTE_FACTOR = 4 / 3  # activation checkpointing runs each forward twice: forward is 2 of training's 6 FLOPs/param
PCIE_GBPS = 25.0  # host↔device GB/s: PCIe 4.0 x16 is 31.5 GB/s a direction nominal; pinned copies reach about 80%
NVME_GBPS = 3.0  # one PCIe 4.0 NVMe drive through DeepSpeed's aio: spec sheets say 5–7 GB/s sequential; mixed
#                  reads and writes of 1 MiB blocks (solo.train.loop.NVME_AIO) sustain about half. An assumption
DEEPSPEED_OVERLAP = 0.5  # share of compute time under which DeepSpeed hides its offload transfers (prefetch,
#                          overlap_comm); issue 9: ZeRO-3 offload "spends much of its time waiting", MegaTrain is
#                          1.84× faster at 14B. An assumption
CPU_ADAM_PARAMS_PER_S_PER_CORE = 3.5e8  # DeepSpeedCPUAdam, fp32, one OpenMP thread: 349M params/s measured on this
#                                         project's 2-core CI machine (AMD EPYC, AVX2), 50M parameters
HOST_CORES = 8  # cores running CPU Adam on a GPU machine when not told (a home desktop); `--host-cores` sets it
HOST_COPY_GBPS = 10.0  # host memory copies by one core (offload "transfers" when the device is the host, gloo on one
#                        machine): DDR4 sustains 10–20 GB/s single-threaded; the low end, an assumption
CPU_TFLOPS_PER_CORE = 0.034  # fp32 training TFLOP/s of a one-core CPU worker: the demo preset at ZeRO-0 on 2
#                              workers, 4,110 tokens/s × 16.5 MFLOPs/token over 2 cores (results/train_overhead.md)
DEFAULT_GPU = "RTX 4090"
# Host buffers DeepSpeed swaps NVMe tensors through, at its defaults (deepspeed/runtime/zero/offload_config.py and
# zero/config.py): optimizer, buffer_count 4 buffers of a sub-group (sub_group_size 1e9 elements) in fp32;
# parameters, buffer_count 5 buffers, each of the largest weight's partition (solo.train.loop.param_swap_buffer_elements
# sets buffer_size so).
NVME_OPTIMIZER_BUFFERS, NVME_SUB_GROUP_ELEMENTS = 4, 1e9
NVME_PARAM_BUFFERS = 5
OPTIMIZER_STATE_BYTES = 12  # fp32 master weight, Adam's m and v (the ZeRO paper's K = 12): what NVMe offload moves
# ZeRO-3 reduce-scatters its gradient bucket through DeepSpeed's reduce_scatter_coalesced
# (deepspeed/runtime/comm/coalesced_collectives.py), which first torch.cat's the bucket into a new buffer; gloo's
# reduce_scatter_tensor copies that once more (a 0.25 GiB input raised the peak RSS by 0.25 GiB), NCCL's does not.
# ZeRO-1 and 2 reduce the bucket's slices in place (stage_1_and_2.py `average_tensor`; gloo's all_reduce: no copy).
ZERO3_REDUCE_COPIES_GPU, ZERO3_REDUCE_COPIES_CPU = 1, 2


@dataclass(frozen=True)
class Hardware:
    gpu_mem_gb: float | None  # None: no GPU, the workers train on host cores
    host_mem_gb: float
    nvme_gb: float | None = None
    gpus: int = 1  # GPUs on the machine (one worker each); without a GPU, worker processes of one core each
    gpu: str = DEFAULT_GPU  # a key of solo.train.loop.PEAK_TFLOPS
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


@dataclass(frozen=True)
class Estimate:
    strategy: Strategy
    gpu_gb: float | None
    host_gb: float
    nvme_gb: float
    tokens_per_s: float
    short_of: str  # "" when it fits, else which memory is short

    @property
    def fits(self) -> bool:
        return not self.short_of


@dataclass(frozen=True)
class Plan:
    model: ModelShape
    hardware: Hardware
    seq_len: int
    micro_batch: int
    accumulation: int
    rows: list[Estimate]
    pick: Estimate | None


# ---------------------------------------------------------------- strategies


def strategies(hardware: Hardware) -> list[Strategy]:
    """Every combination DeepSpeed accepts: optimizer offload from stage 1 (DeepSpeed's ZeRO-Offload), NVMe only
    at stage 3 (stage 1 and 2 treat any offload device as host memory: deepspeed/runtime/zero/stage_1_and_2.py) and
    only with an NVMe drive; parameter offload needs stage 3. bf16 on a GPU, fp32 on the CPU. The stream engine on
    one GPU."""
    precision = "bf16" if hardware.gpu_mem_gb is not None else "fp32"
    places = ["none", "cpu"] + (["nvme"] if hardware.nvme_gb is not None else [])
    found = []
    for stage in (0, 1, 2, 3):
        for optimizer in (["none"] if stage == 0 else places if stage == 3 else ["none", "cpu"]):
            for params in (places if stage == 3 else ["none"]):
                for checkpointing in (False, True):
                    found.append(Strategy("deepspeed", stage, optimizer, params, checkpointing, precision))
    if hardware.gpu_mem_gb is not None and hardware.gpus == 1:
        # It checkpoints at every layer boundary by design (solo/train/stream.py); ZeRO settings do not apply.
        found.append(Strategy("stream", 0, "none", "none", True, precision))
    return found


# ---------------------------------------------------------------- memory


def activation_bytes(model: ModelShape, seq_len: int, micro_batch: int, checkpointing: bool, element: int) -> float:
    """Own formula. What transformers' LlamaDecoderLayer keeps for backward, per token, in elements of the
    activation dtype: two RMSNorms (each its fp32-upcast input, two elements under bf16, and its output: 3h, or
    2h in fp32), the attention input (h), RoPE'd q and k and v kept by SDPA (h + 2·kv), the attention output (h),
    the MLP input (h) and gate, up, silu(gate) and their product (4·i): 10h + 2·kv + 4·i under bf16. SDPA /
    flash attention keeps no T×T scores. Checkpointing keeps each layer's input (h) and recomputes one layer at
    a time. Either way one layer's activation gradients are alive in backward, and the logits: in the activation
    dtype, an fp32 copy for the loss under bf16, and the fp32 log-softmax cross-entropy saves."""
    h, kv, i = model.hidden, model.kv_dim, model.intermediate
    norms = 2 * h * (4 // element + 1)
    per_layer = norms + 4 * h + 2 * kv + 4 * i
    kept = model.layers * h + per_layer if checkpointing else model.layers * per_layer
    logits = model.vocab * (element + (4 if element < 4 else 0) + 4)
    tokens = seq_len * micro_batch
    return tokens * ((kept + per_layer) * element + logits)


def model_state_bytes(s: Strategy, model: ModelShape, workers: int) -> tuple[float, float, float]:
    """Bytes of weights, gradients and Adam state: (per device, host for the whole machine, NVMe)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p, n, buffer = model.parameters, workers, DEEPSPEED_BUFFER_FACTOR
    nvme = 0.0
    if s.zero_stage == 3 and not (s.offload_optimizer == "none" and s.offload_params != "none"):
        # DeepSpeed's: host (cpu_mem) and per-GPU (gpu_mem) for one node; NVMe rows start from its CPU figures.
        host, device, _ = estimate_zero3_model_states_mem_needs(
            p, model.largest_module, num_gpus_per_node=n, num_nodes=1, cpu_offload=s.offload_optimizer != "none",
            cpu_offload_params=s.offload_params != "none", zero_init=True, additional_buffer_factor=buffer)
    elif s.zero_stage == 3:
        # Own (DeepSpeed has no estimate for parameters offloaded with the optimizer on the GPU): 16-bit
        # parameters in host memory; on the GPU the gathered largest module (16-bit weight and gradient) and the
        # optimizer side of its 18 bytes/param (16-bit gradient 2, fp32 gradient 4, fp32 master 4, Adam 8).
        host, device = 2 * p * buffer, 4 * model.largest_module + 16 * p / n
    elif s.zero_stage == 2 or s.offload_optimizer != "none":
        # DeepSpeed's ZeRO-2 estimate; ZeRO-1 with offload runs the same code (stage_1_and_2.py).
        host, device = estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=n, num_nodes=1,
                                                              cpu_offload=s.offload_optimizer != "none",
                                                              additional_buffer_factor=buffer)
    else:
        # Own, in DeepSpeed's byte accounting (2 bytes 16-bit weights + 18 bytes of gradients and optimizer
        # state per parameter): ZeRO-1 partitions the optimizer state but not the 16-bit gradients; ZeRO-0
        # partitions nothing. The host holds the fp32 model while it is built, before it moves to the device.
        device = 2 * p + (2 * p + 16 * p / n if s.zero_stage == 1 else 18 * p)
        host = 4 * p * n * buffer
        if s.zero_stage == 0 and s.precision == "fp32":
            # Own: at stage 0 in fp32 DeepSpeed hands the model to a plain optimizer, no master copy: weights 4,
            # gradients 4, Adam 8.
            return 16 * p, host, nvme
    if s.offload_optimizer == "nvme":
        # Own (ZeRO-Infinity): fp32 master and Adam's two moments move to NVMe; the host keeps the fp32 gradients
        # and DeepSpeed's swap buffers.
        host -= OPTIMIZER_STATE_BYTES * p * buffer
        nvme += OPTIMIZER_STATE_BYTES * p
        host += NVME_OPTIMIZER_BUFFERS * min(NVME_SUB_GROUP_ELEMENTS, p / n) * 4 * n
    if s.offload_params == "nvme":
        host -= 2 * p * buffer
        nvme += 2 * p
        host += NVME_PARAM_BUFFERS * -(-model.largest_module // n) * (2 if s.precision == "bf16" else 4) * n
    if s.precision == "fp32":
        # Own: the estimators count 16-bit weights and gradients; in fp32 each takes 4 bytes, 2 more. Only planned
        # on the CPU, where device and host are the same memory, so where they sit does not matter.
        device += 2 * p / (n if s.zero_stage == 3 else 1) + 2 * p / (n if s.zero_stage >= 2 else 1)
        # Own: there the ZeRO stage's "device" tensors are host memory, made by the same initialization copies
        # as its host ones, and glibc's malloc keeps what those copies free (0.55 GB of a 125M ZeRO-3 run's RSS
        # went back to the system only under malloc_trim: benchmarks/results/planner_vs_measured.md); DeepSpeed's
        # additional_buffer_factor, which its estimators put on host memory, covers them too.
        device *= buffer
    return device, host, nvme


def reduce_bucket_bytes(s: Strategy, model: ModelShape, on_gpu: bool) -> float:
    """Own, from DeepSpeed's source: at ZeRO-1 to 3 each worker reduces gradients through one bucket of
    `reduce_bucket_size` elements (solo.train.loop.REDUCE_BUCKET_ELEMENTS; deepspeed/runtime/zero/stage3.py
    `_setup_for_real_optimizer`, stage_1_and_2.py `setup_buckets`), which the estimators leave out, and at
    ZeRO-3 the copies its reduce-scatter makes of it. On a GPU the caching allocator takes the whole bucket at
    once, in the compute dtype; on the CPU it is fp32 pages touched as gradients fill it (at most the whole
    model's)."""
    if s.engine != "deepspeed" or s.zero_stage == 0:
        return 0.0
    if on_gpu:
        copies = ZERO3_REDUCE_COPIES_GPU if s.zero_stage == 3 else 0
        return REDUCE_BUCKET_ELEMENTS * (2 if s.precision == "bf16" else 4) * (1 + copies)
    copies = ZERO3_REDUCE_COPIES_CPU if s.zero_stage == 3 else 0
    return min(REDUCE_BUCKET_ELEMENTS, model.parameters) * 4 * (1 + copies)


def stream_state_bytes(s: Strategy, model: ModelShape, on_gpu: bool) -> tuple[float, float]:
    """Own, from solo/train/stream.py's design (issue 9): (device, host). Host: its bytes per parameter (fp32 weights,
    gradients, Adam's m and v) and two staging slots of the largest unit, the weights and slots pinned on a
    GPU; device: two fp32 slots of the largest unit, its compute-dtype cast and one unit's gradients."""
    element = 2 if s.precision == "bf16" else 4
    slot = model.largest_unit * element
    host = host_bytes_per_parameter() * model.parameters + 2 * slot
    if on_gpu:
        # PyTorch's caching host allocator rounds each pinned block up to a power of two
        # (ATen/core/CachingHostAllocator.h): 3.0 bytes per parameter more at 2.7b, 1.4 at 1.3b. With it
        # the plan is 40.7 GB for 2.7b where an H200 run measured 42.0 (benchmarks/results/stream_vs_zero3.md).
        pinned = [4 * n for n in model.tensor_sizes()] + [slot, slot]
        host += sum(pinned_block(size) - size for size in pinned)
    device = model.largest_unit * (2 * 4 + element + element)
    return device, host


def pinned_block(size: int) -> int:
    """The bytes PyTorch's caching host allocator takes to pin `size`: the next power of two."""
    return 1 << (size - 1).bit_length()


# ---------------------------------------------------------------- speed


def step_seconds(s: Strategy, model: ModelShape, hw: Hardware, seq_len: int, micro_batch: int,
                 accumulation: int) -> float:
    """One optimizer step of one worker: compute, plus the transfers it cannot hide, plus CPU Adam."""
    p, n = model.parameters, hw.gpus
    on_gpu = hw.gpu_mem_gb is not None
    element = 2 if s.precision == "bf16" else 4
    flops = micro_batch * seq_len * accumulation * model.flops_per_token
    flops *= RECOMPUTE_FACTOR if s.activation_checkpointing else 1
    rate = PEAK_TFLOPS[hw.gpu] * 1e12 * GPU_MFU if on_gpu else CPU_TFLOPS_PER_CORE * 1e12
    compute = flops / (rate * (ZERO3_EFFICIENCY if s.engine == "deepspeed" and s.zero_stage == 3 else 1))
    link = hw.pcie_gbps * 1e9 if on_gpu else HOST_COPY_GBPS * 1e9  # without a GPU, "offload" copies host memory
    adam_cores = hw.host_cores if on_gpu else 1  # one core per CPU worker

    if s.engine == "stream":
        # solo/train/stream.py: per micro-batch every unit's fp32 weights come in for forward and again for backward,
        # its gradients go out in the compute dtype. CPU Adam then updates every parameter a unit at a time,
        # beside the next step's first forward, which takes each unit once it is updated (OverlappedAdam): it
        # hides at most that forward, a quarter of a micro-batch's passes (forward, recompute, backward).
        link_bytes = accumulation * p * (2 * 4 + element)
        adam = p / (CPU_ADAM_PARAMS_PER_S_PER_CORE * adam_cores)
        passes = max(compute, link_bytes / link)
        return passes + adam - min(adam, passes / accumulation / 4)

    passes = 3 if s.activation_checkpointing else 2  # a ZeRO-3 layer is gathered for forward, backward (and recompute)
    link_bytes = nvme_bytes = peer_bytes = 0.0
    if s.offload_params != "none":
        link_bytes += accumulation * passes * element * p / n
    if s.offload_optimizer != "none":
        # DeepSpeed moves the gradient partition to the host at the accumulation boundary, and the updated
        # 16-bit weights back unless they live on the host.
        link_bytes += element * p / n * (1 if s.offload_params != "none" else 2)
    if s.offload_optimizer == "nvme":
        nvme_bytes += 2 * OPTIMIZER_STATE_BYTES * p / n  # read and write master weights and moments
    if s.offload_params == "nvme":
        nvme_bytes += (accumulation * passes + 1) * element * p / n
    if n > 1:
        # Between workers, (n-1)/n of each collective's bytes per worker over PCIe (no NVLink on home GPUs):
        # ZeRO-3 gathers weights each pass and reduce-scatters gradients each micro-batch; below stage 3 the
        # gradients are reduced (and, at stage 1-2, the updated weights gathered) once per step.
        volume = accumulation * (passes + 1) if s.zero_stage == 3 else 2
        peer_bytes = volume * element * p * (n - 1) / n
    transfer = (link_bytes + peer_bytes) / link + nvme_bytes * n / (NVME_GBPS * 1e9)  # one drive for all workers
    hidden = min(transfer, (DEEPSPEED_OVERLAP if on_gpu else 0.0) * compute)
    adam = 0.0
    if s.offload_optimizer != "none" or not on_gpu:
        shard = p / n if s.zero_stage >= 1 else p
        adam = shard * (n if on_gpu else 1) / (CPU_ADAM_PARAMS_PER_S_PER_CORE * adam_cores)
    return compute + transfer - hidden + adam


# ---------------------------------------------------------------- the plan


def estimate(s: Strategy, model: ModelShape, hw: Hardware, seq_len: int, micro_batch: int,
             accumulation: int) -> Estimate:
    n, on_gpu = hw.gpus, hw.gpu_mem_gb is not None
    element = 2 if s.precision == "bf16" else 4
    activations = activation_bytes(model, seq_len, micro_batch, s.activation_checkpointing, element)
    nvme = 0.0
    if s.engine == "stream":
        device, host = stream_state_bytes(s, model, on_gpu)
    else:
        device, host, nvme = model_state_bytes(s, model, n)
    per_worker = device + activations + reduce_bucket_bytes(s, model, on_gpu)
    if on_gpu:
        gpu_gb = (per_worker / GB + CUDA_CONTEXT_GB)
        host_gb = host / GB + n * WORKER_BASELINE_GB
    else:
        gpu_gb = None
        host_gb = (n * per_worker + host) / GB + n * WORKER_BASELINE_GB
    short = []
    if gpu_gb is not None and gpu_gb > hw.gpu_mem_gb * (1 - MEMORY_MARGIN):
        short.append("GPU")
    if host_gb > hw.host_mem_gb * (1 - MEMORY_MARGIN):
        short.append("host")
    if nvme and (hw.nvme_gb is None or nvme / GB > hw.nvme_gb * (1 - MEMORY_MARGIN)):
        short.append("NVMe")
    tokens = n * micro_batch * seq_len * accumulation / step_seconds(s, model, hw, seq_len, micro_batch, accumulation)
    return Estimate(s, gpu_gb, host_gb, nvme / GB, tokens, ", ".join(short))


def plan(model: ModelShape, hardware: Hardware, seq_len: int, micro_batch: int = 1, accumulation: int = 1,
         allowed=lambda strategy: True) -> Plan:
    """Every strategy's estimate, fastest first among those that fit; the pick is the fastest that fits and
    `allowed` accepts (ties go to the one that offloads less)."""
    hardware.check()
    if micro_batch < 1 or accumulation < 1 or seq_len < 1:
        raise SoloError(f"micro-batch, accumulation and seq_len must be at least 1, not {micro_batch}, "
                        f"{accumulation} and {seq_len}")
    rows = [estimate(s, model, hardware, seq_len, micro_batch, accumulation) for s in strategies(hardware)]
    rows.sort(key=lambda e: (not e.fits, -round(e.tokens_per_s, 6), e.strategy.offloads()))
    pick = next((e for e in rows if e.fits and allowed(e.strategy)), None)
    return Plan(model, hardware, seq_len, micro_batch, accumulation, rows, pick)

