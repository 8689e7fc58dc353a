"""Who runs the loop: Ray Train (a worker group, restarted from the last checkpoint when one dies) or, without
Ray, the `deepspeed` launcher (one process per GPU or CPU rank)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import ray.train
from ray.train import TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from solo.errors import SoloError
from solo.runtime import init_deepspeed_group, launched_rank, wait_for_all_ranks, worker_env
from solo.train.auto_strategy import resolve_auto_strategy
from solo.train.checkpoints import FolderSink, RaySink, convert_for_worker_count
from solo.train.config import TrainConfig
from solo.train.fast_path import optimizer_threads
from solo.train.hardware import use_cuda
from solo.train.job import TrainJob
from solo.train.loop import train_worker

RUN_NAME = "train"  # the run's folder in Ray Train's storage, `<stage>/ray/train/`


def _ray_worker_entry(loop_config: dict) -> None:
    init_deepspeed_group(use_cuda(loop_config["job"].config))
    job = loop_config["job"]
    train_worker(job, RaySink(Path(job.output_dir) / "ray" / RUN_NAME), restart=loop_config["restart"])


def start_launched(config: TrainConfig) -> None:
    """torch.distributed from the `deepspeed`/`torchrun` launcher's environment, for a run without Ray."""
    world = int(os.environ["WORLD_SIZE"])
    if world != config.workers:
        raise SoloError(f"the launcher started {world} processes but the config says workers: {config.workers}; "
                        f"pass --set workers={world} (the global batch stays {config.global_batch})")
    # What Ray gives its workers (the compiled-op cache, DeepSpeed's CPU accelerator without a GPU),
    # set before DeepSpeed is imported, since it picks its accelerator then.
    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    init_deepspeed_group(use_cuda(config))


def run_training(job: TrainJob) -> dict:
    """Train under Ray Train, where a worker that dies restarts the group from the last checkpoint; or,
    in a process the `deepspeed` launcher started (one per GPU), run the loop here with checkpoints in
    the stage folder, from which a run started again resumes."""
    # `strategy: auto` becomes the planner's pick for this machine, once, before any worker starts.
    job = job if job.started_at else replace(job, started_at=time.time())
    job, planned = resolve_auto_strategy(job, quiet=bool(launched_rank()))
    job.check()
    config = job.config
    if launched_rank() is not None:
        start_launched(config)
        if launched_rank() == 0:
            convert_for_worker_count(Path(job.output_dir), config)
        wait_for_all_ranks()
        metrics = train_worker(job, FolderSink(Path(job.output_dir) / "checkpoints", config.keep_checkpoints))
        return {**_summary(Path(job.output_dir), metrics), **planned}
    convert_for_worker_count(Path(job.output_dir), config)
    restart = None
    for attempt in range(config.max_failures + 1):
        try:
            # A restart's budget clock starts now, on top of what its checkpoint had spent.
            attempt_job = job if attempt == 0 else replace(job, started_at=time.time())
            result = _trainer(attempt_job, restart).fit()
            return {**_summary(Path(job.output_dir), result.metrics or {}), **planned}
        except TrainingFailedError as failed:
            failures = getattr(failed, "worker_failures", {}).values()
            mistake = next((error for error in failures if isinstance(error, SoloError)), None)
            if mistake is not None:
                # A mistake in the config or the data, not a crash: the same run would fail the same way again.
                raise SoloError(str(mistake)) from None
            if attempt == config.max_failures:
                raise
            restart = f"restart {attempt + 1} of at most {config.max_failures}: {_crash_summary(failed)}"
            print(f"training: {restart}; going on from the last checkpoint", flush=True)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _trainer(job: TrainJob, restart: str | None) -> TorchTrainer:
    """Ray Train's run of the loop. It retries nothing itself (max_failures 0): run_training tells a crash,
    retried, from a mistake in the config or data, which is not; every attempt shares the run's name and
    storage, so each resumes from the checkpoints the ones before it committed."""
    config, cuda = job.config, use_cuda(job.config)
    cores = optimizer_threads(config, node_cores(cuda))
    return TorchTrainer(
        _ray_worker_entry,
        train_loop_config={"job": job, "restart": restart},
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=cuda,
                                               resources_per_worker={"CPU": cores, **({"GPU": 1} if cuda else {})}),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=str(Path(job.output_dir) / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
    )


def node_cores(cuda: bool) -> int:
    """The CPUs of the smallest node that can host a worker (one with a GPU, for a GPU run): a worker whose
    optimizer runs on the host is given its share of them (Ray then sets its OMP_NUM_THREADS to match)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cores = [int(r.get("CPU", 0)) for r in nodes if not cuda or r.get("GPU", 0) >= 1]
    return max(1, min(cores, default=os.cpu_count() or 1))


def _crash_summary(failed: TrainingFailedError) -> str:
    """What crashed, in one line: each failed worker's error, or the controller's."""
    errors = getattr(failed, "worker_failures", None) or {"controller": getattr(failed, "controller_failure", failed)}
    return "; ".join(f"worker {rank}: {type(error).__name__}" + (f" ({str(error).splitlines()[0][:120]})"
                                                                 if str(error).strip() else "")
                     for rank, error in errors.items())


def _summary(output: Path, last: dict) -> dict:
    keep = ("loss", "val_loss", "val_bpb", "tokens_per_s", "tflops", "mfu", "gpu_peak_gb", "host_peak_gb", "step",
            "optimizer_threads")
    return {k: last[k] for k in keep if k in last}
