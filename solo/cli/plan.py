"""`solo plan`: will it fit, and how fast? Memory and tokens/s of every training strategy, and the pick; with
`--config`, what that training config runs with on the machine the flags describe (`--json`: as one object)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import get_args

import yaml

from solo.config import load_config, parse_override
from solo.errors import SoloError
from solo.runtime import cuda_available
from solo.train import planner
from solo.train.auto_strategy import TrainingPlan, loop_kernels, plan_training
from solo.train.config import FinetuneConfig, TrainConfig
from solo.train.fast_path import optimizer_threads
from solo.train.hardware import PEAK_TFLOPS
from solo.train.planner import (
    DEFAULT_GPU,
    HOST_CORES,
    MEMORY_MARGIN,
    PCIE_GBPS,
    Estimate,
    Hardware,
    ModelShape,
    Plan,
    Strategy,
)
from solo.train.presets import PRESETS


def plan(args: argparse.Namespace) -> None:
    if not cuda_available():  # DeepSpeed's estimators load its accelerator: say it is the CPU rather than be warned
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.config is None and args.preset is None:
        if args.json or args.overrides:
            raise SoloError("solo plan --json and --set need --config FILE")
        print(presets_table(args.vocab_size or 32000, args.seq_len or 2048))
        return
    if args.config is not None and args.preset is not None:
        raise SoloError("solo plan takes --config FILE or --preset P, not both (the config names its model)")
    if args.host_mem is None or (args.gpu_mem is None) == (not args.cpu):
        what = "--config FILE" if args.config else "--preset P"
        raise SoloError(f"solo plan {what} needs --host-mem GB, and --gpu-mem GB (a GPU) or --cpu (CPU workers)")
    for flag, value in (("--gpu-mem", args.gpu_mem), ("--host-mem", args.host_mem), ("--nvme", args.nvme),
                        ("--pcie-gbps", args.pcie_gbps)):
        if value is not None and not value > 0:
            raise SoloError(f"{flag} must be a positive number of GB (GB/s for --pcie-gbps), not {value:g}")
    for flag, value in (("--gpus", args.gpus), ("--micro-batch", args.micro_batch), ("--grad-accum", args.grad_accum),
                        ("--host-cores", args.host_cores), ("--seq-len", args.seq_len),
                        ("--vocab-size", args.vocab_size)):
        if value is not None and value < 1:
            raise SoloError(f"{flag} must be at least 1, not {value}")
    if args.config is None:
        if args.json or args.overrides:
            raise SoloError("solo plan --json and --set need --config FILE")
        hardware = hardware_from(args, args.gpus or 1, args.nvme)
        seq_len = args.seq_len or 2048
        model = planner.ModelShape.preset(args.preset, args.vocab_size or 32000, seq_len)
        # The loop as a config's defaults (`loop:` all auto) resolve it with each strategy: compiled on a GPU
        # wherever it can be.
        kernels = loop_kernels(TrainConfig(), cuda=hardware.gpu_mem_gb is not None)
        print(render(planner.plan(model, hardware, seq_len, args.micro_batch or 1, args.grad_accum or 1,
                                  kernels=kernels)))
        return
    if args.micro_batch is not None or args.grad_accum is not None:
        raise SoloError("solo plan --config takes the batch from the config: --set micro_batch=N, "
                        "--set global_batch=N instead of --micro-batch and --grad-accum")
    plan_config(args)


def hardware_from(args: argparse.Namespace, gpus: int, nvme_gb: float | None) -> Hardware:
    return Hardware(gpu_mem_gb=args.gpu_mem, host_mem_gb=args.host_mem, nvme_gb=nvme_gb, gpus=gpus, gpu=args.gpu,
                    pcie_gbps=args.pcie_gbps, host_cores=args.host_cores)


def read_config(path: str, overrides: list[str]) -> TrainConfig:
    """A pretrain config (TrainConfig), or a finetune config (FinetuneConfig) where the file or a --set names a
    setting only fine-tuning has."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else {}
    except yaml.YAMLError:
        tree = {}  # load_config says what is wrong with it
    keys = set(tree) if isinstance(tree, dict) else set()
    keys |= {parse_override(text)[0][0] for text in overrides}
    finetune_only = set(FinetuneConfig.model_fields) - set(TrainConfig.model_fields)
    return load_config(FinetuneConfig if keys & finetune_only else TrainConfig, path, overrides)


def names_nvme(config: TrainConfig) -> bool:
    return config.strategy != "auto" and "nvme" in (config.strategy.offload_optimizer, config.strategy.offload_params)


def plan_config(args: argparse.Namespace) -> None:
    config = read_config(args.config, args.overrides)
    if args.gpus is not None and args.gpus != config.workers:
        config = load_config(type(config), args.config, [*args.overrides, f"workers={args.gpus}"])
    # The training machine's drive is not this one: where the config offloads to NVMe and --nvme does not say
    # how much space it has, the plan does not check it.
    nvme_checked = not (names_nvme(config) and args.nvme is None)
    hardware = hardware_from(args, config.workers, args.nvme if nvme_checked else math.inf)
    seq_len = config.seq_len or args.seq_len or 2048
    vocab = config.vocab_size or args.vocab_size or 32000
    # DeepSpeed logs to stdout (its accelerator, on a GPU machine): kept off the one object --json prints.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        planned = plan_training(config, hardware, seq_len, vocab)
    summary = plan_summary(planned, nvme_checked)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render_config(planned, summary, args.config))


def strategy_fields(s: Strategy) -> dict:
    return {"zero_stage": s.zero_stage, "offload_optimizer": s.offload_optimizer, "offload_params": s.offload_params,
            "activation_checkpointing": s.activation_checkpointing, "precision": s.precision}


def row_fields(e: Estimate) -> dict:
    return {"label": e.strategy.label(), "engine": e.strategy.engine, **strategy_fields(e.strategy),
            "gpu_gb": None if e.gpu_gb is None else round(e.gpu_gb, 3), "host_gb": round(e.host_gb, 3),
            "nvme_gb": round(e.nvme_gb, 3), "tokens_per_s": round(e.tokens_per_s, 1), "fits": e.fits,
            "short_of": e.short_of}


def plan_summary(planned: TrainingPlan, nvme_checked: bool) -> dict:
    """`solo plan --config --json`'s object (docs/training.md#solo-plan---config): the strategy, engine and loop
    switches the config runs with, its batch, the planned memory and speed, the hardware, every strategy's row."""
    result, config, pick, switches = planned.plan, planned.config, planned.estimate, planned.switches
    hw, model = result.hardware, result.model
    on_gpu = hw.gpu_mem_gb is not None
    smallest = min(result.rows, key=lambda e: (e.gpu_gb or 0, e.host_gb))
    return {
        "strategy_source": "auto" if planned.chosen else "config",
        "pick": strategy_fields(pick.strategy) if pick else None,
        "label": pick.strategy.label() if pick else None,
        "engine": planned.engine,
        "compile": switches.compile if switches else None,
        "loss": switches.loss if switches else None,
        "tokens_per_step": config.global_batch * result.seq_len,
        "micro_batch": config.micro_batch,
        "accumulation": result.accumulation,
        "workers": config.workers,
        "seq_len": result.seq_len,
        "vocab_size": model.vocab,
        "optimizer_threads": optimizer_threads(config, hw.host_cores) if pick else None,
        "planned_gpu_gb": round(pick.gpu_gb, 3) if pick and pick.gpu_gb is not None else None,
        "planned_host_gb": round(pick.host_gb, 3) if pick else None,
        "planned_nvme_gb": round(pick.nvme_gb, 3) if pick else None,
        "planned_tokens_per_s": round(pick.tokens_per_s, 1) if pick else None,
        "planned_mfu": (round(pick.tokens_per_s * model.flops_per_token / (PEAK_TFLOPS[hw.gpu] * 1e12 * hw.gpus), 4)
                        if pick and on_gpu else None),
        "fits": bool(pick and pick.fits),
        "short_of": pick.short_of if pick else smallest.short_of,
        "nvme_checked": nvme_checked,
        "hardware": {"gpu": hw.gpu if on_gpu else None, "gpu_mem_gb": hw.gpu_mem_gb, "gpus": hw.gpus,
                     "host_mem_gb": hw.host_mem_gb, "host_cores": hw.host_cores,
                     "pcie_gbps": hw.pcie_gbps if on_gpu else None,
                     "nvme_gb": hw.nvme_gb if hw.nvme_gb is not None and math.isfinite(hw.nvme_gb) else None},
        "model": {"preset": config.model, "parameters": model.parameters},
        "rows": [row_fields(e) for e in result.rows],
    }


def render_config(planned: TrainingPlan, summary: dict, path: str) -> str:
    """The table, then the config's line and what it runs with."""
    config, pick, switches = planned.config, planned.estimate, planned.switches
    lines = [*table_lines(planned.plan),
             f"config {path} ({type(config).__name__}): {config.global_batch} × {summary['seq_len']:,} = "
             f"{summary['tokens_per_step']:,} tokens a step (micro-batch {config.micro_batch} × "
             f"{summary['accumulation']} accumulation × {config.workers} worker(s))"]
    if pick is None:
        return "\n".join([*lines, "strategy: auto: nothing fits: add host memory, GPUs, or take a smaller preset or "
                                  "micro-batch (auto never picks NVMe: name it in the config's strategy)"])
    mfu = f", MFU {summary['planned_mfu']:.0%}" if summary["planned_mfu"] is not None else ""
    source = "strategy: auto picks" if planned.chosen else "strategy from the config:"
    verdict = "fits" if pick.fits else f"does not fit (short of {pick.short_of} memory)"
    lines += [f"{source} {pick.strategy.label()} (engine: {planned.engine}), about {pick.tokens_per_s:,.0f} "
              f"tokens/s{mfu}; {verdict}",
              f"loop: {switches.label()}; optimizer threads: {summary['optimizer_threads']}"]
    if config.trains_adapters():
        lines.append("adapters (LoRA, QLoRA): the planner models full-weight training, so these figures are an "
                     "upper bound")
    if not summary["nvme_checked"]:
        lines.append("NVMe space not checked: the config offloads to its nvme_path, on the training machine's drive "
                     "(--nvme GB checks it)")
    if planned.chosen:
        lines += ["", strategy_yaml(pick.strategy).rstrip()]
    return "\n".join(lines)


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


def table_lines(result: Plan) -> list[str]:
    """The model, the hardware, the batch and every strategy's row."""
    m, hw = result.model, result.hardware
    if hw.gpu_mem_gb is not None:
        where = (f"{hw.gpus} × {hw.gpu} ({PEAK_TFLOPS[hw.gpu]:g} TFLOPS bf16 peak, {hw.gpu_mem_gb:g} GB), "
                 f"PCIe {hw.pcie_gbps:g} GB/s, {hw.host_cores} host cores")
    else:
        where = f"no GPU: {hw.gpus} CPU worker{'s' if hw.gpus > 1 else ''} of one core"
    if hw.nvme_gb is None:
        nvme = "no NVMe (--nvme GB adds its rows)"
    else:
        nvme = f"NVMe {hw.nvme_gb:g} GB" if math.isfinite(hw.nvme_gb) else "NVMe space not checked"
    lines = [f"{m.name}: {m.parameters / 1e6:,.1f}M parameters, {m.flops_per_token / 1e9:.3f} GFLOPs/token "
             f"(vocab {m.vocab:,}, seq_len {result.seq_len:,})",
             f"hardware: {where}; host {hw.host_mem_gb:g} GB; {nvme}",
             f"micro-batch {result.micro_batch} × {result.accumulation} accumulation × {hw.gpus} worker(s); "
             f"fits: at most {100 * (1 - MEMORY_MARGIN):.0f}% of each memory", "",
             f"{'strategy':<50} {'GPU GB':>7} {'host GB':>8} {'NVMe GB':>8} {'tokens/s':>10}  fits?"]
    for e in result.rows:
        gpu = f"{e.gpu_gb:7.1f}" if e.gpu_gb is not None else f"{'-':>7}"
        lines.append(f"{e.strategy.label():<50} {gpu} {e.host_gb:8.1f} {e.nvme_gb:8.1f} {e.tokens_per_s:10,.0f}  "
                     + ("yes" if e.fits else f"no ({e.short_of})"))
    return [*lines, ""]


def render(result: Plan) -> str:
    lines = table_lines(result)
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
                        help="without it (and --config): every preset's parameters and FLOPs/token")
    parser.add_argument("--config", metavar="FILE", help="a pretrain or finetune config: plan what it runs with "
                                                         "(its model, batch, seq_len, vocab_size, strategy, loop)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of --config (repeatable)")
    parser.add_argument("--json", action="store_true", help="with --config: one JSON object on stdout")
    parser.add_argument("--gpu-mem", type=float, metavar="GB", help="memory of one GPU")
    parser.add_argument("--cpu", action="store_true", help="plan for training on CPU workers (one core each), no GPU")
    parser.add_argument("--host-mem", type=float, metavar="GB", help="the machine's memory")
    parser.add_argument("--nvme", type=float, metavar="GB", help="free space on an NVMe drive for ZeRO-Infinity "
                                                                 "offload")
    parser.add_argument("--gpus", type=int, help="GPUs on the machine, one worker each (with --cpu: workers); "
                                                 "default 1, or the config's workers")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=list(PEAK_TFLOPS), help="its kind, for the peak TFLOPS")
    parser.add_argument("--micro-batch", type=int, help="sequences per worker per forward pass (default 1)")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (offload traffic and CPU "
                                                       "Adam come once a step; default 1)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048, or the config's seq_len)")
    parser.add_argument("--vocab-size", type=int, help="tokens in the vocabulary (default 32000, or the config's "
                                                       "vocab_size)")
    parser.add_argument("--pcie-gbps", type=float, default=PCIE_GBPS, help="effective host↔device bandwidth, GB/s")
    parser.add_argument("--host-cores", type=int, default=HOST_CORES, help="cores running CPU Adam for offloaded "
                                                                           "optimizers")


COMMANDS = {"plan": (_arguments, plan)}
