"""`strategy: auto`: the planner's pick for the machine a training run starts on."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from transformers import LlamaConfig

from solo.errors import SoloError
from solo.tokens.tokenizer import load
from solo.train.config import StrategyConfig, TrainConfig, muon_problem
from solo.train.hardware import PEAK_TFLOPS, use_cuda
from solo.train.job import TrainJob
from solo.train.planner import GB, HOST_CORES, Hardware, ModelShape, Strategy, plan


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


def resolve_auto_strategy(job: TrainJob, quiet: bool = False) -> tuple[TrainJob, dict]:
    """`strategy: auto` → the planner's pick for this machine, printed, and what to record in the stage's
    metrics; any other strategy is returned as it is, with nothing to record."""
    config = job.config
    if config.strategy != "auto":
        return job, {}
    precision = "bf16" if use_cuda(config) else "fp32"
    if config.trains_adapters():
        # The planner models full-weight training; LoRA/QLoRA train at ZeRO-0 whatever the strategy says.
        chosen = StrategyConfig(zero_stage=0, offload_optimizer="none", offload_params="none", precision=precision)
        record = {"strategy": f"auto: ZeRO-0 · {precision} (adapters: the planner covers full-weight training only)"}
        if not quiet:
            print(f"strategy: {record['strategy']}", flush=True)
        return dataclasses.replace(job, config=config.model_copy(update={"strategy": chosen})), record

    model, seq_len = _job_model(job)
    hardware = detect_hardware(config)
    accumulation = config.global_batch // (config.micro_batch * config.workers)

    has_engines = "engine" in type(config).model_fields
    chosen_engine = config.engine if has_engines and "engine" in config.model_fields_set else None

    muon = config.optim.name == "muon"

    def allowed(s: Strategy) -> bool:
        try:
            engine, strategy = as_config(s)  # NVMe needs an nvme_path, which no machine detection can pick
        except ValueError:
            return False
        if muon and muon_problem(engine, strategy, adapters=False):
            return False
        if chosen_engine is not None:  # an engine the config names is kept; auto picks the strategy for it
            return s.engine == chosen_engine
        return s.engine == "deepspeed" or has_engines

    result = plan(model, hardware, seq_len, config.micro_batch, accumulation, allowed)
    if result.pick is None:
        need = min(result.rows, key=lambda e: (e.gpu_gb or 0, e.host_gb))
        raise SoloError(f"strategy: auto found nothing that fits {model.name} at micro-batch {config.micro_batch} "
                        f"on this machine (host {hardware.host_mem_gb:.1f} GB"
                        + (f", GPU {hardware.gpu_mem_gb:.1f} GB" if hardware.gpu_mem_gb else "")
                        + f"); the smallest, {need.strategy.label()}, needs "
                        + (f"{need.gpu_gb:.1f} GB GPU and " if need.gpu_gb is not None else "")
                        + f"{need.host_gb:.1f} GB host"
                        + ("; optim.name: muon rules out optimizer offload, ZeRO-3 and the stream engine: "
                           "optim.name: adamw allows them" if muon else "") + ": see `solo plan`")
    engine, chosen = as_config(result.pick.strategy)
    update: dict = {"strategy": chosen}
    if has_engines:
        update["engine"] = engine
    record = {"strategy": f"auto: {result.pick.strategy.label()}",
              "planned_host_gb": round(result.pick.host_gb, 3),
              "planned_tokens_per_s": round(result.pick.tokens_per_s, 1)}
    if result.pick.gpu_gb is not None:
        record["planned_gpu_gb"] = round(result.pick.gpu_gb, 3)
    if not quiet:
        print(f"strategy: {record['strategy']} (planned: "
              + (f"{result.pick.gpu_gb:.1f} GB GPU, " if result.pick.gpu_gb is not None else "")
              + f"{result.pick.host_gb:.1f} GB host, {result.pick.tokens_per_s:,.0f} tokens/s; `solo plan` shows "
              f"the others)", flush=True)
    return dataclasses.replace(job, config=config.model_copy(update=update)), record


def _job_model(job: TrainJob) -> tuple[ModelShape, int]:
    """The shape a training job will build: the model it starts from, else its preset at the tokenizer's
    vocabulary; and the token rows' length."""
    seq_len = json.loads((Path(job.train_dir) / "index.json").read_text())["seq_len"]
    if job.init_model_dir:
        return ModelShape.of(Path(job.init_model_dir).name, LlamaConfig.from_pretrained(job.init_model_dir),
                             seq_len), seq_len

    return ModelShape.preset(job.config.model, len(load(job.tokenizer_dir)), seq_len), seq_len
