"""The loop's speed switches (`loop:`, solo.train.config.LoopConfig) resolved for a device, an engine and a
strategy: what `auto` means there, and a clear refusal where a switch asked for cannot run.

Each switch leaves the result as the plain computation's (tests/unit/test_loop_switches.py); `auto` turns on,
on CUDA, what the fastest single-GPU loops do (nanochat, LitGPT: compiled model, no whole-batch fp32 logits,
pinned prefetched inputs, fused AdamW), and on the CPU only what measured faster there
(benchmarks/results/loop_switches_cpu.md).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from solo.errors import SoloError
from solo.train.config import StrategyConfig, TrainConfig

# On the CPU each switch stays off under auto unless it measured faster there
# (benchmarks/loop_switches_cpu.py on this project's 2-core CI machine).
CPU_DEFAULTS = {"compile": False, "loss": "plain", "prefetch": False, "fused_adamw": False}


@dataclass(frozen=True)
class Switches:
    """What the loop does, every `auto` decided."""

    compile: bool
    loss: str  # plain | chunked | fused
    loss_chunk_tokens: int
    prefetch: bool
    fused_adamw: bool

    def label(self) -> str:
        on = [name for name, value in (("compile", self.compile), ("prefetch", self.prefetch),
                                       ("fused AdamW", self.fused_adamw)) if value]
        return ", ".join([f"{self.loss} cross-entropy", *on])


def liger_available() -> bool:
    """Whether Liger kernel's fused linear cross-entropy can run here: the package, Triton and a CUDA device."""
    return (torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
            and importlib.util.find_spec("triton") is not None)


def resolve_switches(config: TrainConfig, cuda: bool, llama_like: bool = True) -> Switches:
    """The switches for `config`, whose strategy is already planned (not "auto"). `llama_like`: the model has
    its decoder under `.model` and its head under `.lm_head` (solo's presets do; a fine-tuned model from
    elsewhere may not). Raises SoloError, in one line naming the setting, for a switch asked for that cannot
    run with this engine and strategy."""
    loop = config.loop
    strategy: StrategyConfig = config.strategy
    stream = config.engine == "stream"
    whole_weights = stream or strategy.zero_stage <= 2  # ZeRO-3 holds a shard of each weight between uses
    adapters = config.trains_adapters()

    def pick(name: str, asked, on_gpu: bool):
        return (on_gpu if cuda else CPU_DEFAULTS[name]) if asked == "auto" else asked

    compile_ok = whole_weights and not adapters
    if loop.compile is True and not compile_ok:
        raise SoloError("loop.compile: true runs at zero_stage 0-2 or with engine: stream, full-weight training: "
                        "set loop.compile: auto")
    compiled = pick("compile", loop.compile, compile_ok) and compile_ok

    loss_ok = whole_weights and llama_like and not adapters
    if loop.loss in ("chunked", "fused") and not loss_ok:
        raise SoloError(f"loop.loss: {loop.loss} needs the head's weight whole and a Llama-style model, full-weight "
                        "training (zero_stage 0-2 or engine: stream): set loop.loss: auto")
    if loop.loss == "fused" and not liger_available():
        raise SoloError("loop.loss: fused needs Liger kernel, Triton and a CUDA GPU (pip install liger-kernel): "
                        "set loop.loss: chunked")
    loss = (("fused" if liger_available() else "chunked") if cuda else CPU_DEFAULTS["loss"]) \
        if loop.loss == "auto" else loop.loss
    if not loss_ok:
        loss = "plain"

    prefetch = pick("prefetch", loop.prefetch, True)

    device_adam = (not stream and strategy.offload_optimizer == "none" and config.optim.name == "adamw")
    if loop.fused_adamw is True and not device_adam:
        raise SoloError("loop.fused_adamw: true needs optim.name: adamw running on the device (no optimizer offload, "
                        "engine: deepspeed): set loop.fused_adamw: auto")
    fused = pick("fused_adamw", loop.fused_adamw, True) and device_adam

    return Switches(compile=compiled, loss=loss, loss_chunk_tokens=loop.loss_chunk_tokens, prefetch=prefetch,
                    fused_adamw=fused)


def optimizer_threads(config: TrainConfig, host_cores: int) -> int:
    """Cores a worker is given, for its optimizer above all. Where the optimizer runs on the host (optimizer
    offload, the stream engine), each worker gets an equal share of the machine's `host_cores` for DeepSpeed's
    CPU Adam (OpenMP, one thread per core); otherwise one: a GPU worker's optimizer runs on the GPU, and CPU
    workers are one core each (data parallelism over the cores)."""
    strategy: StrategyConfig = config.strategy
    on_host = config.engine == "stream" or strategy.offload_optimizer != "none"
    return max(1, host_cores // config.workers) if on_host else 1
