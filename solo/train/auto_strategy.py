"""What a training config runs with on given hardware: `strategy: auto`'s pick for the machine a run starts on,
and `solo plan --config`'s answer for any machine, both from `plan_training`."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig

from solo.errors import SoloError
from solo.tokens.tokenizer import load
from solo.train.config import StrategyConfig, TrainConfig, muon_problem
from solo.train.fast_path import Switches, resolve_switches
from solo.train.hardware import PEAK_TFLOPS, use_cuda
from solo.train.job import TrainJob
from solo.train.planner import GB, HOST_CORES, Estimate, Hardware, Kernels, ModelShape, Plan, Strategy, estimate, plan
from solo.train.presets import padded_vocab


def detect_hardware(config: TrainConfig) -> Hardware:
    """This machine as the training run will use it: the first CUDA device's memory and name when the run
    trains on GPUs (one worker each), else `workers` one-core CPU workers; the host's total memory."""
    host_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB  # total, as /proc/meminfo's MemTotal
    if not use_cuda(config):
        return Hardware(gpu_mem_gb=None, host_mem_gb=host_gb, gpus=config.workers)

    props = torch.cuda.get_device_properties(0)
    # A GPU we have no peak for is planned as the slowest we know: the ranking, not the figure, is what counts.
    kind = next((k for k in PEAK_TFLOPS if k in props.name), min(PEAK_TFLOPS, key=PEAK_TFLOPS.get))
    return Hardware(gpu_mem_gb=props.total_memory / GB, host_mem_gb=host_gb, gpus=config.workers, gpu=kind,
                    host_cores=os.cpu_count() or HOST_CORES)


def as_config(s: Strategy) -> tuple[str, StrategyConfig]:
    """The engine and StrategyConfig a planned strategy is; a ValueError where this build's config cannot say it."""
    if s.engine == "stream":
        return "stream", StrategyConfig(zero_stage=0, offload_optimizer="none", offload_params="none",
                                        activation_checkpointing=True, precision=s.precision)
    return "deepspeed", StrategyConfig(zero_stage=s.zero_stage, offload_optimizer=s.offload_optimizer,
                                       offload_params=s.offload_params,
                                       activation_checkpointing=s.activation_checkpointing, precision=s.precision)


def as_strategy(engine: str, strategy: StrategyConfig) -> Strategy:
    """The planner's view of a strategy a config names."""
    if engine == "stream":
        return Strategy("stream", 0, "none", "none", True, strategy.precision)
    return Strategy("deepspeed", strategy.zero_stage, strategy.offload_optimizer, strategy.offload_params,
                    strategy.activation_checkpointing, strategy.precision)


@dataclass(frozen=True)
class TrainingPlan:
    """A config on a machine: the engine, strategy and loop switches it runs with (None where `strategy: auto`
    finds nothing that fits), that strategy's estimate (fits or not, for a strategy the config names), and
    every strategy's estimate."""

    config: TrainConfig  # with the planned engine and strategy where there is one
    engine: str | None
    strategy: StrategyConfig | None
    switches: Switches | None
    estimate: Estimate | None
    plan: Plan
    chosen: bool  # the planner chose (strategy: auto), rather than the config


def model_shape(config: TrainConfig, seq_len: int, vocab_size: int, init_model_dir: str | None = None) -> ModelShape:
    """The model a config trains: the one it starts from, else its preset with the embedding padded as the job
    pads it (solo.train.presets.padded_vocab)."""
    if init_model_dir:
        return ModelShape.of(Path(init_model_dir).name, LlamaConfig.from_pretrained(init_model_dir), seq_len)
    return ModelShape.preset(config.model, padded_vocab(vocab_size, config.vocab_multiple), seq_len)


def switches(config: TrainConfig, s: Strategy, cuda: bool) -> Switches | None:
    """The loop's switches `config` resolves to with strategy `s`, as the job resolves them; None where a switch
    the config asks for cannot run with it (solo.train.fast_path.resolve_switches)."""
    strategy = StrategyConfig.model_construct(  # unvalidated: an NVMe row has no nvme_path
        zero_stage=s.zero_stage, offload_optimizer=s.offload_optimizer, offload_params=s.offload_params,
        nvme_path=None, activation_checkpointing=s.activation_checkpointing, precision=s.precision)
    try:
        return resolve_switches(config.model_copy(update={"strategy": strategy, "engine": s.engine}), cuda)
    except SoloError:
        return None


def loop_kernels(config: TrainConfig, cuda: bool) -> Callable[[Strategy], Kernels]:
    """How the loop computes with each strategy under `config`'s `loop:` (compile, the loss), for the planner."""

    def kernels(s: Strategy) -> Kernels:
        resolved = switches(config, s, cuda)
        return Kernels(resolved.compile, resolved.loss, resolved.loss_chunk_tokens) if resolved else Kernels()

    return kernels


def adapter_strategy(precision: str) -> StrategyConfig:
    """What `strategy: auto` is for LoRA and QLoRA: ZeRO-0, nothing offloaded. The planner models full-weight
    training, so for adapters its figures are an upper bound."""
    return StrategyConfig(zero_stage=0, offload_optimizer="none", offload_params="none", precision=precision)


def plan_training(config: TrainConfig, hardware: Hardware, seq_len: int, vocab_size: int,
                  init_model_dir: str | None = None) -> TrainingPlan:
    """What `config` runs with on `hardware` for rows of `seq_len` tokens and a tokenizer of `vocab_size`:
    under `strategy: auto` the fastest strategy that fits, that this build can configure (never NVMe, which
    needs an nvme_path), that the config's optimizer and an engine it names allow, and whose loop switches
    resolve; otherwise the strategy the config names (for LoRA and QLoRA under auto, `adapter_strategy`),
    estimated. The loop's switches (compile, the loss) are resolved per strategy as the job resolves them
    (solo.train.fast_path.resolve_switches)."""
    model = model_shape(config, seq_len, vocab_size, init_model_dir)
    accumulation = config.global_batch // (config.micro_batch * config.workers)
    cuda = hardware.gpu_mem_gb is not None
    kernels = loop_kernels(config, cuda)

    if config.strategy != "auto" or config.trains_adapters():
        engine = config.engine
        strategy = adapter_strategy("bf16" if cuda else "fp32") if config.strategy == "auto" else config.strategy
        named = as_strategy(engine, strategy)
        result = plan(model, hardware, seq_len, config.micro_batch, accumulation, kernels=kernels)
        chosen = estimate(named, model, hardware, seq_len, config.micro_batch, accumulation, kernels(named))
        planned = config.model_copy(update={"strategy": strategy})
        return TrainingPlan(planned, engine, strategy, resolve_switches(planned, cuda), chosen, result,
                            chosen=config.strategy == "auto")

    engine_named = "engine" in config.model_fields_set
    muon = config.optim.name == "muon"

    def allowed(s: Strategy) -> bool:
        try:
            engine, strategy = as_config(s)  # NVMe needs an nvme_path, which no machine detection can pick
        except ValueError:
            return False
        if muon and muon_problem(engine, strategy, adapters=False):
            return False
        if engine_named and s.engine != config.engine:  # an engine the config names is kept
            return False
        return switches(config, s, cuda) is not None

    result = plan(model, hardware, seq_len, config.micro_batch, accumulation, allowed, kernels)
    if result.pick is None:
        return TrainingPlan(config, None, None, None, None, result, chosen=True)
    engine, strategy = as_config(result.pick.strategy)
    planned = config.model_copy(update={"strategy": strategy, "engine": engine})
    return TrainingPlan(planned, engine, strategy, resolve_switches(planned, cuda), result.pick, result, chosen=True)


def nothing_fits(planned: TrainingPlan) -> str:
    """Why `strategy: auto` has no pick, and the smallest strategy's needs."""
    result, config, hardware = planned.plan, planned.config, planned.plan.hardware
    need = min(result.rows, key=lambda e: (e.gpu_gb or 0, e.host_gb))
    return (f"strategy: auto found nothing that fits {result.model.name} at micro-batch {config.micro_batch} "
            f"on this machine (host {hardware.host_mem_gb:.1f} GB"
            + (f", GPU {hardware.gpu_mem_gb:.1f} GB" if hardware.gpu_mem_gb else "")
            + f"); the smallest, {need.strategy.label()}, needs "
            + (f"{need.gpu_gb:.1f} GB GPU and " if need.gpu_gb is not None else "")
            + f"{need.host_gb:.1f} GB host"
            + ("; optim.name: muon rules out optimizer offload, ZeRO-3 and the stream engine: "
               "optim.name: adamw allows them" if config.optim.name == "muon" else "") + ": see `solo plan`")


def resolve_auto_strategy(job: TrainJob, quiet: bool = False) -> tuple[TrainJob, dict]:
    """`strategy: auto` → the planner's pick for this machine, printed, and what to record in the stage's
    metrics; any other strategy is returned as it is, with nothing to record."""
    config = job.config
    if config.strategy != "auto":
        return job, {}
    precision = "bf16" if use_cuda(config) else "fp32"
    if config.trains_adapters():
        chosen = adapter_strategy(precision)
        record = {"strategy": f"auto: ZeRO-0 · {precision} (adapters: the planner covers full-weight training only)"}
        if not quiet:
            print(f"strategy: {record['strategy']}", flush=True)
        return dataclasses.replace(job, config=config.model_copy(update={"strategy": chosen})), record

    seq_len = json.loads((Path(job.train_dir) / "index.json").read_text())["seq_len"]
    vocab = 0 if job.init_model_dir else len(load(job.tokenizer_dir))
    planned = plan_training(config, detect_hardware(config), seq_len, vocab, job.init_model_dir)
    pick = planned.estimate
    if pick is None:
        raise SoloError(nothing_fits(planned))
    record = {"strategy": f"auto: {pick.strategy.label()}", "planned_host_gb": round(pick.host_gb, 3),
              "planned_tokens_per_s": round(pick.tokens_per_s, 1)}
    if pick.gpu_gb is not None:
        record["planned_gpu_gb"] = round(pick.gpu_gb, 3)
    if not quiet:
        print(f"strategy: {record['strategy']} (planned: "
              + (f"{pick.gpu_gb:.1f} GB GPU, " if pick.gpu_gb is not None else "")
              + f"{pick.host_gb:.1f} GB host, {pick.tokens_per_s:,.0f} tokens/s; `solo plan` shows "
              f"the others)", flush=True)
    update = {"strategy": planned.strategy, "engine": planned.engine}
    return dataclasses.replace(job, config=config.model_copy(update=update)), record
