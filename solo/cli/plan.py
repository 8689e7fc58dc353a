"""`solo plan`: will it fit, and how fast? Memory and tokens/s of every training strategy, and the pick."""

from __future__ import annotations

import argparse
import os
from typing import get_args

from solo.errors import SoloError
from solo.runtime import cuda_available
from solo.train import planner
from solo.train.config import TrainConfig
from solo.train.hardware import PEAK_TFLOPS
from solo.train.planner import DEFAULT_GPU, HOST_CORES, MEMORY_MARGIN, PCIE_GBPS, ModelShape, Plan, Strategy
from solo.train.presets import PRESETS


def plan(args: argparse.Namespace) -> None:
    if not cuda_available():  # DeepSpeed's estimators load its accelerator: say it is the CPU rather than be warned
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.preset is None:
        print(presets_table(args.vocab_size, args.seq_len))
        return
    if args.host_mem is None or (args.gpu_mem is None) == (not args.cpu):
        raise SoloError("solo plan --preset P needs --host-mem GB, and --gpu-mem GB (a GPU) or --cpu (CPU workers)")
    for flag, value in (("--gpu-mem", args.gpu_mem), ("--host-mem", args.host_mem), ("--nvme", args.nvme),
                        ("--pcie-gbps", args.pcie_gbps)):
        if value is not None and not value > 0:
            raise SoloError(f"{flag} must be a positive number of GB (GB/s for --pcie-gbps), not {value:g}")
    for flag, value in (("--gpus", args.gpus), ("--micro-batch", args.micro_batch), ("--grad-accum", args.grad_accum),
                        ("--host-cores", args.host_cores), ("--seq-len", args.seq_len),
                        ("--vocab-size", args.vocab_size)):
        if value < 1:
            raise SoloError(f"{flag} must be at least 1, not {value}")
    hardware = planner.Hardware(gpu_mem_gb=args.gpu_mem, host_mem_gb=args.host_mem, nvme_gb=args.nvme, gpus=args.gpus,
                                gpu=args.gpu, pcie_gbps=args.pcie_gbps, host_cores=args.host_cores)
    model = planner.ModelShape.preset(args.preset, args.vocab_size, args.seq_len)
    print(render(planner.plan(model, hardware, args.seq_len, args.micro_batch, args.grad_accum)))


def strategy_yaml(s: Strategy) -> str:
    """What to paste into a pretrain or finetune config."""
    if s.engine == "stream":
        return ("engine: stream\noptim:\n  name: adamw  # the stream engine's Adam runs in host memory\n"
                f"strategy:\n  precision: {s.precision}\n")
    lines = ["strategy:", f"  zero_stage: {s.zero_stage}", f"  offload_optimizer: {s.offload_optimizer}",
             f"  offload_params: {s.offload_params}"]
    if "nvme" in (s.offload_optimizer, s.offload_params):
        lines.append("  nvme_path: /mnt/nvme/solo  # a writable folder on the NVMe drive")
    lines += [f"  activation_checkpointing: {'true' if s.activation_checkpointing else 'false'}",
              f"  precision: {s.precision}"]
    if s.offload_optimizer != "none" or s.zero_stage == 3:  # what Muon, the default optimizer, cannot run with
        lines += ["optim:", "  name: adamw  # Muon keeps its state beside the weights: ZeRO 0-2, no offload"]
    return "\n".join(lines) + "\n"


def render(result: Plan) -> str:
    m, hw = result.model, result.hardware
    if hw.gpu_mem_gb is not None:
        where = (f"{hw.gpus} × {hw.gpu} ({PEAK_TFLOPS[hw.gpu]:g} TFLOPS bf16 peak, {hw.gpu_mem_gb:g} GB), "
                 f"PCIe {hw.pcie_gbps:g} GB/s, {hw.host_cores} host cores")
    else:
        where = f"no GPU: {hw.gpus} CPU worker{'s' if hw.gpus > 1 else ''} of one core"
    lines = [f"{m.name}: {m.parameters / 1e6:,.1f}M parameters, {m.flops_per_token / 1e9:.3f} GFLOPs/token "
             f"(vocab {m.vocab:,}, seq_len {result.seq_len:,})",
             f"hardware: {where}; host {hw.host_mem_gb:g} GB; "
             + (f"NVMe {hw.nvme_gb:g} GB" if hw.nvme_gb is not None else "no NVMe (--nvme GB adds its rows)"),
             f"micro-batch {result.micro_batch} × {result.accumulation} accumulation × {hw.gpus} worker(s); "
             f"fits: at most {100 * (1 - MEMORY_MARGIN):.0f}% of each memory", "",
             f"{'strategy':<50} {'GPU GB':>7} {'host GB':>8} {'NVMe GB':>8} {'tokens/s':>10}  fits?"]
    for e in result.rows:
        gpu = f"{e.gpu_gb:7.1f}" if e.gpu_gb is not None else f"{'-':>7}"
        lines.append(f"{e.strategy.label():<50} {gpu} {e.host_gb:8.1f} {e.nvme_gb:8.1f} {e.tokens_per_s:10,.0f}  "
                     + ("yes" if e.fits else f"no ({e.short_of})"))
    lines.append("")
    if result.pick is None:
        lines.append("nothing fits: add host memory, an NVMe drive (--nvme), GPUs, or take a smaller preset or "
                     "micro-batch")
    else:
        lines += [f"pick: {result.pick.strategy.label()}, about {result.pick.tokens_per_s:,.0f} tokens/s", "",
                  strategy_yaml(result.pick.strategy).rstrip()]
    return "\n".join(lines)


def presets_table(vocab: int, seq_len: int) -> str:
    lines = [f"{'preset':<8} {'parameters':>12} {'GFLOPs/token':>13}   (vocab {vocab:,}, seq_len {seq_len:,})"]
    for name in PRESETS:
        m = ModelShape.preset(name, vocab, seq_len)
        lines.append(f"{name:<8} {m.parameters / 1e6:>11,.1f}M {m.flops_per_token / 1e9:>13.3f}")
    return "\n".join(lines)




def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=get_args(TrainConfig.model_fields["model"].annotation),
                        help="without it: every preset's parameters and FLOPs/token")
    parser.add_argument("--gpu-mem", type=float, metavar="GB", help="memory of one GPU")
    parser.add_argument("--cpu", action="store_true", help="plan for training on CPU workers (one core each), no GPU")
    parser.add_argument("--host-mem", type=float, metavar="GB", help="the machine's memory")
    parser.add_argument("--nvme", type=float, metavar="GB", help="free space on an NVMe drive for ZeRO-Infinity "
                                                                 "offload")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs on the machine, one worker each (with --cpu: "
                                                            "workers)")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=list(PEAK_TFLOPS), help="its kind, for the peak TFLOPS")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per worker per forward pass")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (offload "
                                                                  "traffic and CPU Adam come once a step)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--vocab-size", type=int, default=32000, help="tokens in the vocabulary")
    parser.add_argument("--pcie-gbps", type=float, default=PCIE_GBPS, help="host↔device bandwidth, GB/s")
    parser.add_argument("--host-cores", type=int, default=HOST_CORES, help="cores running CPU Adam for offloaded "
                                                                           "optimizers")


COMMANDS = {"plan": (_arguments, plan)}
