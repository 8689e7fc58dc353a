"""Who runs the loop: Ray Train (a worker group, restarted from the last checkpoint when one dies) or, without
Ray, the `deepspeed` launcher (one process per GPU or CPU rank)."""

from __future__ import annotations

import os
from pathlib import Path

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from solo.errors import SoloError
from solo.runtime import init_deepspeed_group, launched_rank, wait_for_all_ranks, worker_env
from solo.train.auto_strategy import resolve_auto_strategy
from solo.train.checkpoints import FolderSink, RaySink, convert_for_worker_count
from solo.train.config import TrainConfig
from solo.train.hardware import use_cuda
from solo.train.job import TrainJob
from solo.train.loop import train_worker


def _ray_worker_entry(loop_config: dict) -> None:
    init_deepspeed_group(use_cuda(loop_config["job"].config))
    train_worker(loop_config["job"], RaySink())


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
    job, planned = resolve_auto_strategy(job, quiet=bool(launched_rank()))
    config = job.config
    if launched_rank() is not None:
        start_launched(config)
        if launched_rank() == 0:
            convert_for_worker_count(Path(job.output_dir), config)
        wait_for_all_ranks()
        metrics = train_worker(job, FolderSink(Path(job.output_dir) / "checkpoints", config.keep_checkpoints))
        return {**_summary(Path(job.output_dir), metrics), **planned}
    convert_for_worker_count(Path(job.output_dir), config)
    cuda = use_cuda(config)
    trainer = TorchTrainer(
        _ray_worker_entry,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=cuda,
                                               resources_per_worker={"CPU": 1, **({"GPU": 1} if cuda else {})}),
        run_config=ray.train.RunConfig(
            name="train",
            storage_path=str(Path(job.output_dir) / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
    )
    result = trainer.fit()
    return {**_summary(Path(job.output_dir), result.metrics or {}), **planned}


def _summary(output: Path, last: dict) -> dict:
    keep = ("loss", "val_loss", "val_bpb", "tokens_per_s", "tflops", "mfu", "gpu_peak_gb", "host_peak_gb", "step")
    return {k: last[k] for k in keep if k in last}
