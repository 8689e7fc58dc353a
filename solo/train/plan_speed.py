"""How fast: the seconds of one optimizer step for a strategy, a model and the hardware (solo.train.planner's speed).

Compute is FLOPs per token over an achievable fraction of the GPU's peak; to it come what offload and streaming
move over PCIe, NVMe and between GPUs (less what DeepSpeed hides under compute), the fixed cost of each of the
stream engine's layer passes and of each ZeRO-3 parameter fetch, and CPU Adam. Each constant below says where it
comes from. The offload and streaming ones are fitted to the H200 rows of benchmarks/results/stream_vs_zero3.json,
which tests/unit/test_plan_config.py holds to ±30% and to the engines' measured order; GPU_MFU is not measured
here. The stream engine's default traffic (`StreamTraffic.once_per_step`) is the engine as it is now built, and
its figure a prediction until a GPU run measures it: the rows the constants come from ran the engine before it
moved each weight once a step (`StreamTraffic.per_micro_batch`), and the test checks those rows with that traffic.
"""

from __future__ import annotations

from solo.train.hardware import PEAK_TFLOPS
from solo.train.plan_model import Hardware, Kernels, ModelShape, Strategy, StreamTraffic, element_bytes

# Achievable model-FLOPs utilization of one GPU with nothing offloaded. Not measured here: nanochat reports 41–46%
# on one H100 and LitGPT / TinyLlama 50–56% on A100s, each with torch.compile and fused kernels; solo runs
# transformers' Llama, compiled (loop.compile) with a chunked or fused cross-entropy, so the low end of those.
# Eager (compile off) launches each small kernel from Python: lower, an assumption too.
GPU_MFU = 0.40
GPU_MFU_EAGER = 0.30  # also what the fit below assumes of the measured rows' compute (eager, plain loss)
ZERO3_EFFICIENCY = 0.91  # ZeRO-3's gathers and releases per layer: it ran at 0.92 and 0.91 of ZeRO-0's tokens/s
#                          on 1 and 2 CPU workers (benchmarks/results/train_overhead.md), our only measure of its cost
RECOMPUTE_FACTOR = 4 / 3  # activation checkpointing runs each forward twice: forward is 2 of training's 6 FLOPs/param
# Fitted to benchmarks/results/stream_vs_zero3.json (H200, 24 GB cap, seq 1024, micro-batch 8 × 4 accumulation,
# vocab 4096, 16 host cores: ZeRO-3 + optimizer and params → cpu at 125m/350m/1.3b, the stream engine at
# 125m–2.7b), every row within ±16% with these three and plan_model.PCIE_GBPS (the fit table: docs/training.md):
LAYER_PASS_SECONDS = 1.75e-3  # the stream engine's fixed cost of one unit's forward or backward for a micro-batch
#                               (its events, slot hand-over, eager kernel launches): the 125m stream row, 0.54 s a step
#                               for 3.1 GB of traffic and 104 passes, leaves 0.2 s no byte count explains
ZERO3_FETCH_SECONDS = 1.0e-3  # ZeRO-3's fixed cost of gathering one offloaded parameter tensor (its hooks, a
#                               synchronous fetch): the ZeRO-3 rows, 880 fetches a step at 125m (1.01 s for a 1.4 GB,
#                               0.07 s compute step) and 1,744 at 350m (2.48 s)
CPU_ADAM_HOST_PARAMS_PER_S = 1.44e9  # DeepSpeed's CPU Adam on a GPU host, however many cores: memory-bound at ~28
#                                      bytes moved per parameter (40 GB/s). The 1.3b rows (1.1B parameters: 0.8 s of
#                                      the ZeRO-3 row's 4.95 s, beside 20 GB of traffic and 1,744 fetches)
NVME_GBPS = 3.0  # one PCIe 4.0 NVMe drive through DeepSpeed's aio: spec sheets say 5–7 GB/s sequential; mixed
#                  reads and writes of 1 MiB blocks (solo.train.loop.NVME_AIO) sustain about half. An assumption
DEEPSPEED_OVERLAP = 0.5  # share of compute time under which DeepSpeed hides its offload transfers (prefetch,
#                          overlap_comm); issue 9: ZeRO-3 offload "spends much of its time waiting", MegaTrain is
#                          1.84× faster at 14B. An assumption
CPU_ADAM_PARAMS_PER_S_PER_CORE = 3.5e8  # DeepSpeedCPUAdam, fp32, one OpenMP thread: 349M params/s measured on this
#                                         project's 2-core CI machine (AMD EPYC, AVX2), 50M parameters; several
#                                         cores reach at most CPU_ADAM_HOST_PARAMS_PER_S
HOST_COPY_GBPS = 10.0  # host memory copies by one core (offload "transfers" when the device is the host, gloo on one
#                        machine): DDR4 sustains 10–20 GB/s single-threaded; the low end, an assumption
CPU_TFLOPS_PER_CORE = 0.034  # fp32 training TFLOP/s of a one-core CPU worker: the demo preset at ZeRO-0 on 2
#                              workers, 4,110 tokens/s × 16.5 MFLOPs/token over 2 cores (results/train_overhead.md)
OPTIMIZER_STATE_BYTES = 12  # fp32 master weight, Adam's m and v (the ZeRO paper's K = 12): what NVMe offload moves


def compute_seconds(s: Strategy, model: ModelShape, hw: Hardware, tokens: int, kernels: Kernels) -> float:
    """The step's FLOPs at the rate one worker reaches: recomputation a third more; ZeRO-3's gathers a tenth less."""
    flops = tokens * model.flops_per_token * (RECOMPUTE_FACTOR if s.activation_checkpointing else 1)
    if hw.gpu_mem_gb is None:
        return flops / (CPU_TFLOPS_PER_CORE * 1e12)
    mfu = GPU_MFU if kernels.compiled else GPU_MFU_EAGER
    zero3 = ZERO3_EFFICIENCY if s.engine == "deepspeed" and s.zero_stage == 3 else 1.0
    return flops / (PEAK_TFLOPS[hw.gpu] * 1e12 * mfu * zero3)


def adam_params_per_s(hw: Hardware) -> float:
    """CPU Adam's rate: a CPU worker's one core; on a GPU machine the host's cores, up to its memory's limit."""
    if hw.gpu_mem_gb is None:
        return CPU_ADAM_PARAMS_PER_S_PER_CORE
    return min(CPU_ADAM_PARAMS_PER_S_PER_CORE * hw.host_cores, CPU_ADAM_HOST_PARAMS_PER_S)


def stream_seconds(s: Strategy, model: ModelShape, hw: Hardware, micro_batches: int, compute: float,
                   traffic: StreamTraffic, host_boundary_bytes: float) -> float:
    """solo/train/stream.py: weights in and gradients out over PCIe under compute (double-buffered), each unit's
    pass for each micro-batch at a fixed cost, and CPU Adam, which updates a unit at a time beside the next step's
    forward (OverlappedAdam): it hides at most that forward, a quarter of the passes (forward, recompute,
    backward), of one micro-batch or, where a layer runs the whole step's micro-batches at once, of all."""
    element = element_bytes(s.precision)
    streamed = model.layer_parameters
    ends = model.parameters - streamed  # the embedding (and an untied head), the final norm
    link_bytes = (traffic.weight_trips * traffic.weight_bytes * streamed
                  + traffic.gradient_trips * traffic.gradient_bytes * model.parameters
                  + 2 * host_boundary_bytes)  # boundaries kept in host memory: out in forward, back for backward
    # Streamed ends come as often as they are used; resident ones come back once, updated by the host's Adam.
    link_bytes += (traffic.embedding_trips * traffic.weight_bytes if traffic.embedding_trips else element) * ends
    moving = max(compute, link_bytes / (hw.pcie_gbps * 1e9))
    passes = micro_batches * 2 * (model.layers + 2)  # forward, then recompute and backward, of every unit
    adam = model.parameters / adam_params_per_s(hw)
    window = moving / 4 if traffic.step_wide else moving / micro_batches / 4
    return moving + passes * LAYER_PASS_SECONDS + adam - min(adam, window)


def step_seconds(s: Strategy, model: ModelShape, hw: Hardware, seq_len: int, micro_batch: int, accumulation: int,
                 kernels: Kernels, traffic: StreamTraffic, host_boundary_bytes: float = 0.0) -> float:
    """One optimizer step of one worker: compute, plus the transfers it cannot hide, plus CPU Adam.
    `host_boundary_bytes`: the stream engine's boundary activations kept in host memory this step."""
    p, n = model.parameters, hw.gpus
    on_gpu = hw.gpu_mem_gb is not None
    element = element_bytes(s.precision)
    compute = compute_seconds(s, model, hw, micro_batch * seq_len * accumulation, kernels)
    if s.engine == "stream":
        return stream_seconds(s, model, hw, accumulation, compute, traffic, host_boundary_bytes)

    link = hw.pcie_gbps * 1e9 if on_gpu else HOST_COPY_GBPS * 1e9  # without a GPU, "offload" copies host memory
    passes = 3 if s.activation_checkpointing else 2  # a ZeRO-3 layer is gathered for forward, backward (and recompute)
    link_bytes = nvme_bytes = peer_bytes = fetches = 0.0
    if s.offload_params != "none":
        link_bytes += accumulation * passes * element * p / n
        fetches = accumulation * passes * len(model.tensor_sizes()) if on_gpu else 0.0
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
        adam = shard * (n if on_gpu else 1) / adam_params_per_s(hw)  # a GPU machine's workers share its host
    return compute + transfer - hidden + fetches * ZERO3_FETCH_SECONDS + adam
