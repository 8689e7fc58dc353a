"""Will it fit, and how fast? Memory and tokens/s of every training strategy for a model on given hardware.

`solo plan --preset 7b --gpu-mem 24 --host-mem 64` prints the table, `solo plan --config FILE` plans what a
training config would run with; `strategy: auto` in a training config takes the fastest strategy that fits the
machine it runs on (both through solo.train.auto_strategy.plan_training).

Model states (weights, gradients, Adam) come from DeepSpeed's own estimators where it has them
(ZeRO-2 and ZeRO-3, CPU offload: `estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`); stage 0, stage 1 without offload, NVMe offload, fp32 and
the stream engine use our own formulas, each marked "own" below. Activations (with the loss the loop computes:
the whole micro-batch's logits, or one chunk's) and DeepSpeed's gradient reduce bucket, which its estimators
leave out, are always our own count.

Speed (solo.train.plan_speed; what is planned over: solo.train.plan_model) is FLOPs per token over an
achievable fraction of the GPU's peak, plus what offload and streaming move over PCIe and NVMe and between GPUs,
the fixed cost of each layer pass or ZeRO-3 parameter fetch, and CPU Adam. The offload and streaming constants
are fitted to the H200 rows of benchmarks/results/stream_vs_zero3.json (tests/unit/test_plan_config.py holds
every row to ±30% and the engines to their measured order); the GPU's MFU without offload is an assumption from
published figures, not measured here. The stream engine is planned as it is built now (each weight moved twice
a step in bf16, gradients back once: `StreamTraffic.once_per_step`), a prediction until a GPU run measures it;
the rows it is fitted to ran the engine before that (`StreamTraffic.per_micro_batch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from solo.errors import SoloError
from solo.train.engines import REDUCE_BUCKET_ELEMENTS
from solo.train.plan_model import (
    DEFAULT_GPU,
    EAGER,
    HOST_CORES,
    PCIE_GBPS,
    Hardware,
    Kernels,
    ModelShape,
    Strategy,
    StreamTraffic,
    element_bytes,
)
from solo.train.plan_speed import OPTIMIZER_STATE_BYTES, step_seconds
from solo.train.stream import host_bytes_per_parameter
from solo.train.stream_transfers import pinned_blocks

# What the planner plans over (solo.train.plan_model), named here too: `planner.Hardware`, `planner.Strategy`, ...
__all__ = ["DEFAULT_GPU", "EAGER", "HOST_CORES", "PCIE_GBPS", "Hardware", "Kernels", "ModelShape", "Strategy",
           "StreamTraffic", "element_bytes", "Estimate", "Plan", "plan", "estimate", "strategies"]


GB = 1024**3  # GiB, as torch reports device memory and the training loop its peaks (host_peak_gb)

# ---------------------------------------------------------------- assumptions

MEMORY_MARGIN = 0.10  # fits: at most 90% of a memory, for allocator fragmentation and what no formula counts
CUDA_CONTEXT_GB = 0.8  # CUDA context, cuBLAS workspace and NCCL buffers: typically 0.5–1 GB before any tensor
WORKER_BASELINE_GB = 0.63  # a Ray Train worker's RSS without a real model (Python, torch, transformers' Llama,
#                            DeepSpeed and its CPU Adam op, TensorBoard, Ray, a first forward and backward): 0.625 GB
#                            measured by benchmarks/planner_vs_measured.py's probe
DEEPSPEED_BUFFER_FACTOR = 1.5  # DeepSpeed's estimators' additional_buffer_factor default, on our formulas too
LOSS_CHUNK_COPIES = 3  # fp32-sized copies of one chunk's logits the chunked cross-entropy holds at once
#                        (solo.train.loss: bf16 logits, their fp32 upcast, the softmax turned gradient, its bf16 cast)
# Host buffers DeepSpeed swaps NVMe tensors through, at its defaults (deepspeed/runtime/zero/offload_config.py and
# zero/config.py): optimizer, buffer_count 4 buffers of a sub-group (sub_group_size 1e9 elements) in fp32;
# parameters, buffer_count 5 buffers, each of the largest weight's partition (solo.train.loop.param_swap_buffer_elements
# sets buffer_size so).
NVME_OPTIMIZER_BUFFERS, NVME_SUB_GROUP_ELEMENTS = 4, 1e9
NVME_PARAM_BUFFERS = 5
# ZeRO-3 reduce-scatters its gradient bucket through DeepSpeed's reduce_scatter_coalesced
# (deepspeed/runtime/comm/coalesced_collectives.py), which first torch.cat's the bucket into a new buffer; gloo's
# reduce_scatter_tensor copies that once more (a 0.25 GiB input raised the peak RSS by 0.25 GiB), NCCL's does not.
# ZeRO-1 and 2 reduce the bucket's slices in place (stage_1_and_2.py `average_tensor`; gloo's all_reduce: no copy).
ZERO3_REDUCE_COPIES_GPU, ZERO3_REDUCE_COPIES_CPU = 1, 2


@dataclass(frozen=True)
class Estimate:
    strategy: Strategy
    gpu_gb: float | None
    host_gb: float
    nvme_gb: float
    tokens_per_s: float
    short_of: str  # "" when it fits, else which memory is short
    kernels: Kernels = EAGER  # how the loop computes with this strategy

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


def activation_bytes(model: ModelShape, seq_len: int, micro_batch: int, checkpointing: bool, element: int,
                     kernels: Kernels = EAGER) -> float:
    """Own formula. What transformers' LlamaDecoderLayer keeps for backward, per token, in elements of the
    activation dtype: two RMSNorms (each its fp32-upcast input, two elements under bf16, and its output: 3h, or
    2h in fp32), the attention input (h), RoPE'd q and k and v kept by SDPA (h + 2·kv), the attention output (h),
    the MLP input (h) and gate, up, silu(gate) and their product (4·i): 10h + 2·kv + 4·i under bf16. SDPA /
    flash attention keeps no T×T scores. Checkpointing keeps each layer's input (h) and recomputes one layer at
    a time. Either way one layer's activation gradients are alive in backward, and the loss's: with the plain
    loss the whole micro-batch's logits, in the activation dtype, an fp32 copy for the loss under bf16, and the
    fp32 log-softmax cross-entropy saves; chunked or fused (solo.train.loss), one chunk's logits (LOSS_CHUNK_COPIES
    fp32 copies) and the gradients it computes in the same pass, of the head's input (fp32, every token) and of its
    weight (fp32)."""
    h, kv, i = model.hidden, model.kv_dim, model.intermediate
    norms = 2 * h * (4 // element + 1)
    per_layer = norms + 4 * h + 2 * kv + 4 * i
    kept = model.layers * h + per_layer if checkpointing else model.layers * per_layer
    tokens = seq_len * micro_batch
    if kernels.loss == "plain":
        loss = tokens * model.vocab * (element + (4 if element < 4 else 0) + 4)
    else:
        chunk = min(kernels.loss_chunk_tokens, tokens)
        loss = LOSS_CHUNK_COPIES * chunk * model.vocab * 4 + 4 * (tokens + model.vocab) * model.hidden
    return tokens * (kept + per_layer) * element + loss


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


def stream_state_bytes(s: Strategy, model: ModelShape, on_gpu: bool, traffic: StreamTraffic) -> tuple[float, float]:
    """Own, from solo/train/stream.py's design: (device, host), activations aside. Host: its bytes per parameter
    (fp32 weights, gradients, Adam's m and v), pinned on a GPU in the power-of-two blocks PyTorch's caching host
    allocator takes (ATen/core/CachingHostAllocator.h), and two gradient staging slots of the largest unit.
    As built (`traffic.step_wide`): the units' fp32 masters, and their compute-dtype copies (2 more bytes a
    parameter under bf16), cut from a few power-of-two pinned blocks (solo.train.stream_transfers.pinned_blocks),
    and two fp32 gradient staging slots of the largest unit, each its own block; on the device two compute-dtype
    slots of a layer, the embedding, final norm and head resident (weights in the compute dtype, fp32 gradients)
    and a layer's gradients summed over the step's micro-batches in fp32, sent back so. As the H200 rows ran
    (per micro-batch): each weight tensor
    pinned alone, and on the device two fp32 slots of the largest unit, its compute-dtype cast and one unit's
    gradients (then 40.7 GB planned for 2.7b where the run measured 42.0: benchmarks/results/stream_vs_zero3.md)."""
    element = element_bytes(s.precision)
    host = host_bytes_per_parameter() * model.parameters
    if traffic.step_wide:
        layer = model.layer_parameters // model.layers
        ends = model.parameters - model.layer_parameters
        units = [ends] + [layer] * model.layers
        masters = [4 * n for n in units]
        packs = [element * n for n in units] if element < 4 else []
        host += sum(packs)
        device = 2 * element * layer + (element + 4) * ends + (4 + element) * layer
        if on_gpu:
            staging = 4 * model.largest_unit
            host += 2 * pinned_block(staging) + sum(block_loss(sizes) for sizes in (masters, packs) if sizes)
        return device, host
    slot = model.largest_unit * element
    host += 2 * slot
    pinned = [4 * n for n in model.tensor_sizes()] + [slot, slot]
    device = model.largest_unit * (2 * 4 + element + element)
    if on_gpu:
        host += sum(pinned_block(size) - size for size in pinned)
    return device, host


def block_loss(sizes: list[int]) -> int:
    """Bytes lost at the ends of the pinned blocks the stream engine cuts buffers of these sizes from."""
    return sum(block for block, _ in pinned_blocks(sizes)) - sum(sizes)


def pinned_block(size: int) -> int:
    """The bytes PyTorch's caching host allocator takes to pin `size`: the next power of two."""
    return 1 << (size - 1).bit_length()


# ---------------------------------------------------------------- the plan


def estimate(s: Strategy, model: ModelShape, hw: Hardware, seq_len: int, micro_batch: int, accumulation: int,
             kernels: Kernels = EAGER, traffic: StreamTraffic | None = None) -> Estimate:
    """Memory and speed of one strategy. `kernels`: how the loop computes with it; `traffic`: the stream engine's
    (default: as built, `StreamTraffic.once_per_step`)."""
    traffic = traffic or StreamTraffic.once_per_step()
    n, on_gpu = hw.gpus, hw.gpu_mem_gb is not None
    element = element_bytes(s.precision)
    activations = activation_bytes(model, seq_len, micro_batch, s.activation_checkpointing, element, kernels)
    nvme = host_boundaries = 0.0
    if s.engine == "stream":
        device, host = stream_state_bytes(s, model, on_gpu, traffic)
        if traffic.step_wide:
            # Every micro-batch's input to every layer is kept for backward (activation_bytes counted one
            # micro-batch's), and backward holds the gradients at one boundary for every micro-batch. The engine
            # keeps the boundaries on the GPU up to half of what is free there, the rest in pinned host memory
            # (solo.train.stream_activations): copied out and back once a step.
            boundary = seq_len * micro_batch * model.hidden * element
            boundaries = accumulation * model.layers * boundary
            activations += accumulation * boundary - model.layers * boundary
            free = hw.gpu_mem_gb * GB * (1 - MEMORY_MARGIN) - CUDA_CONTEXT_GB * GB - device - activations
            on_device = min(boundaries, max(free, 0.0) / 2)
            activations += on_device
            host_boundaries = boundaries - on_device
            host += host_boundaries
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
    seconds = step_seconds(s, model, hw, seq_len, micro_batch, accumulation, kernels, traffic, host_boundaries)
    return Estimate(s, gpu_gb, host_gb, nvme / GB, n * micro_batch * seq_len * accumulation / seconds,
                    ", ".join(short), kernels)


def plan(model: ModelShape, hardware: Hardware, seq_len: int, micro_batch: int = 1, accumulation: int = 1,
         allowed: Callable[[Strategy], bool] = lambda strategy: True,
         kernels: Callable[[Strategy], Kernels] = lambda strategy: EAGER, traffic: StreamTraffic | None = None,
         ) -> Plan:
    """Every strategy's estimate, fastest first among those that fit; the pick is the fastest that fits and
    `allowed` accepts (ties go to the one that offloads less). `kernels`: how the loop computes with a strategy
    (compile and the loss: solo.train.fast_path.resolve_switches)."""
    hardware.check()
    if micro_batch < 1 or accumulation < 1 or seq_len < 1:
        raise SoloError(f"micro-batch, accumulation and seq_len must be at least 1, not {micro_batch}, "
                        f"{accumulation} and {seq_len}")
    rows = [estimate(s, model, hardware, seq_len, micro_batch, accumulation, kernels(s), traffic)
            for s in strategies(hardware)]
    rows.sort(key=lambda e: (not e.fits, -round(e.tokens_per_s, 6), e.strategy.offloads()))
    pick = next((e for e in rows if e.fits and allowed(e.strategy)), None)
    return Plan(model, hardware, seq_len, micro_batch, accumulation, rows, pick)
