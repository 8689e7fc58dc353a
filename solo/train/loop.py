"""The training loop, the same for pretraining and fine-tuning and for every engine: rows of (input_ids,
labels) in, a Hugging Face model out.

The model is stock `LlamaForCausalLM`; ZeRO sharding and offload are applied to it from outside
(solo.train.engines). `train_worker` needs only torch.distributed and a `CheckpointSink`
(solo.train.checkpoints), so the loop itself does not depend on Ray (solo.train.launch drives it).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from solo.faults import fault_point
from solo.store import Restart, read_manifest, write_manifest
from solo.tokens.shards import LoaderState, ShardLoader, TokenShards
from solo.train import presets
from solo.train.auto_strategy import resolve_auto_strategy
from solo.train.batches import StepBatches, model_inputs
from solo.train.checkpoints import UNIVERSAL, CheckpointSink, check_resumable, resumes_universal
from solo.train.config import TrainConfig
from solo.train.engines import deepspeed_grad_clip, make_engine, train_step
from solo.train.hardware import host_peak_gb, openmp_threads, peak_tflops, use_cuda
from solo.train.job import TrainJob
from solo.train.metrics import MetricsLog
from solo.train.save import save_model
from solo.train.schedule import Budget, lr_factor


def _record_restart(output_dir: Path, step: int, reason: str) -> None:
    manifest = read_manifest(output_dir)
    if manifest is not None:
        manifest.restarts.append(Restart(at=time.time(), resumed_from_step=step, reason=reason))
        write_manifest(output_dir, manifest)


def train_worker(job: TrainJob, sink: CheckpointSink, restart: str | None = None) -> dict:
    """Runs on every worker; torch.distributed is already up. Returns rank 0's final metrics.

    `restart`: why this run is a restart (a worker crashed), when its driver knows; a run that finds a
    checkpoint is one too. Either way rank 0 records it in the stage's manifest, with the step it
    resumed from: 0 when no checkpoint had been committed and it started over."""
    fault_point("train.start")
    if job.config.strategy == "auto":  # a caller that drives the loop itself (a benchmark) rather than run_training
        job, _ = resolve_auto_strategy(job, quiet=dist.get_rank() != 0)
    config = job.config
    setup_started = time.time()
    rank, workers = dist.get_rank(), dist.get_world_size()
    output = Path(job.output_dir)
    cuda = use_cuda(config)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed)

    restored = sink.latest()
    universal = restored is not None and config.engine != "stream" and resumes_universal(restored, workers)
    for problem in restored.skipped if restored is not None else ():
        if rank == 0:
            print(f"warning: the checkpoint {problem}: resuming from an older one", flush=True)
    engine, optimizer, accumulation, switches, _zero3_alive = make_engine(job, workers, device,
                                                                          load_universal=universal)
    trainable = [p for p in engine.module.parameters() if p.requires_grad]

    # Each group's peak rate: Muon's matrices have their own (DeepSpeed tags the groups `use_muon`).
    peak_lrs = [config.optim.muon_lr if group.get("use_muon") else config.optim.lr for group in optimizer.param_groups]
    step, state, spent_before = 0, LoaderState(), 0.0
    if restored is not None:
        check_resumable(restored, config.engine)
        # The universal form is named by its own `latest_universal`; adapter checkpoints hold the adapters alone.
        _, client = engine.load_checkpoint(str(restored.folder / UNIVERSAL if universal else restored.folder),
                                           tag=None if universal else restored.tag,
                                           load_module_strict=not config.trains_adapters())
        step, state = client["step"], LoaderState(**client["loader"])
        spent_before = client.get("spent_s", 0.0)  # absent in checkpoints written before max_minutes
        torch.set_rng_state(client["torch_rng"])
        if rank == 0:
            print(f"resumed from step {step} (epoch {state.epoch}, row {state.position}"
                  + (f", {spent_before / 60:.1f} of {config.max_minutes} minutes spent" if config.max_minutes else "")
                  + ")", flush=True)
    if rank == 0 and (restored is not None or restart is not None):
        outcome = "resumed from checkpoint" if restored is not None else "no checkpoint committed: started over"
        if restored is not None and restored.skipped:
            outcome += " (newer ones damaged: " + "; ".join(restored.skipped) + ")"
        _record_restart(output, step, f"{restart}; {outcome}" if restart else outcome)

    train = ShardLoader(TokenShards(Path(job.train_dir)), rank, workers, config.micro_batch, config.seed, state)
    steps = StepBatches(train, accumulation, device, switches.prefetch)
    val = TokenShards(Path(job.val_dir)) if job.val_dir and (Path(job.val_dir) / "index.json").exists() else None
    seq_len = train.shards.seq_len
    flops_per_token = presets.flops_per_token(engine.module.config, seq_len)
    device_tflops = peak_tflops()  # for MFU; None where unknown (a CPU)
    log = MetricsLog(output, enabled=rank == 0)
    # The cores this worker's OpenMP (DeepSpeed's CPU Adam, torch's CPU kernels) computes on: Ray sets
    # OMP_NUM_THREADS to the CPUs the worker was given (solo.train.fast_path.optimizer_threads).
    optimizer_threads = openmp_threads()
    if rank == 0:
        params = presets.parameter_count(engine.module.config)
        if config.trains_adapters():
            what = (f"{config.method} (rank {config.lora.rank}) on a {params / 1e6:.1f}M-parameter base: "
                    f"{sum(p.numel() for p in trainable) / 1e6:.2f}M trainable, data parallel (ZeRO-0)")
        elif config.engine == "stream":
            what = (f"model {config.model}: {params / 1e6:.1f}M parameters; layer-streaming engine, weights and "
                    f"Adam in host memory, {config.strategy.precision} compute on {device}")
        else:
            what = (f"model {config.model}: {params / 1e6:.1f}M parameters; ZeRO-{config.strategy.zero_stage}, offload "
                    f"optimizer={config.strategy.offload_optimizer} params={config.strategy.offload_params}")
        if deepspeed_grad_clip(config) != config.optim.grad_clip:
            what += (f"; gradient clipping off (optim.grad_clip={config.optim.grad_clip}): DeepSpeed measures "
                     "Muon's orthogonalized updates at ZeRO 1-2, not gradients")
        print(f"{what}; {flops_per_token / 1e6:.1f} MFLOPs/token; {workers} workers × micro-batch "
              f"{config.micro_batch} × {accumulation} accumulation = {config.global_batch} sequences/step; "
              f"{switches.label()}; {optimizer_threads} optimizer thread{'s' if optimizer_threads > 1 else ''}; "
              f"engine ready in {time.time() - setup_started:.1f} s", flush=True)

    metrics: dict = {}
    tokens_per_step = config.global_batch * seq_len
    budget = Budget.of(config)
    # The budget's clock runs from the stage's start (or this attempt's, on a restart), so start-up and
    # evaluations count; a resumed run adds what its checkpoint had spent. Rank 0's clock is the one read.
    clock_start = job.started_at or setup_started

    def spent_s() -> float:
        return spent_before + time.time() - clock_start

    spent = spent_before
    started, window_start, window_steps = time.time(), time.time(), 0
    first_step = step
    last_save = time.time()
    last = budget.done(step, spent)
    while not last:
        lr_scale = lr_factor(step, budget.progress(step, spent), config.optim)
        for group, peak_lr in zip(optimizer.param_groups, peak_lrs):
            group["lr"] = peak_lr * lr_scale
        batch = steps.next()
        loss_sum = train_step(engine, batch.micro_batches)
        step += 1
        window_steps += 1
        # Workers' clocks differ, so rank 0 alone reads the time: the seconds spent, and whether a time-based
        # save is due, ride on the loss all-reduce (a sum, the others add 0), so every rank agrees on the
        # learning rate, the last step and the steps that save, without another collective.
        own_spent = spent_s() if rank == 0 else 0.0
        save_vote = float(rank == 0 and (budget.done(step, own_spent)
                                         or checkpoint_due(step, config, (time.time() - last_save) / 60)))
        reduced = torch.cat([(loss_sum / accumulation).reshape(1), torch.tensor([save_vote, own_spent], device=device)])
        dist.all_reduce(reduced)
        # The step's one wait on the device: everything above is queued, this reads it back.
        loss, save_now, spent = reduced.tolist()
        loss, save_now = loss / workers, save_now > 0.5
        last = budget.done(step, spent)

        if step % config.log_every == 0 or last:
            elapsed = time.time() - window_start
            tokens_per_s = window_steps * tokens_per_step / elapsed
            eta = budget.eta_s(step, spent, (time.time() - started) / (step - first_step))
            metrics = {"step": step, "loss": round(loss, 4), "lr": config.optim.lr * lr_scale,
                       "optimizer_threads": optimizer_threads,
                       "tokens_per_s": round(tokens_per_s, 1),
                       "tflops": round(tokens_per_s * flops_per_token / 1e12, 4),
                       "host_peak_gb": round(host_peak_gb(), 3), "eta_s": round(eta, 1),
                       "minutes": round(spent / 60, 3)}
            if config.optim.name == "muon":
                metrics["muon_lr"] = config.optim.muon_lr * lr_scale
            if device_tflops:
                metrics["mfu"] = round(tokens_per_s * flops_per_token / 1e12 / (device_tflops * workers), 4)
            if cuda:
                metrics["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
            if val is not None and (step % config.eval_every == 0 or last):
                metrics["val_loss"] = round(validation_loss(engine, val, rank, workers, config, device), 4)
                if job.val_bytes_per_token:
                    metrics["val_bpb"] = round(metrics["val_loss"] / math.log(2) / job.val_bytes_per_token, 4)
            log.write(metrics)
            window_start, window_steps = time.time(), 0

        if save_now:
            last_save = time.time()
            # The loader's state after this step's rows, not after the rows already read ahead for the next.
            client_state = {"step": step, "loader": vars(batch.loader_state).copy(), "torch_rng": torch.get_rng_state(),
                            "spent_s": spent}
            sink.save(engine, step, client_state, metrics or {"step": step, "loss": loss},
                      exclude_frozen=config.trains_adapters())
        elif metrics.get("step") == step:
            sink.report(metrics)

    steps.close()
    save_model(engine, job, rank)
    log.close()
    dist.barrier()
    return metrics


def checkpoint_due(step: int, config: TrainConfig, minutes_since_save: float) -> bool:
    """Whether `step` ends with a checkpoint: every `checkpoint_every` steps, at the last step, or once
    `checkpoint_every_minutes` passed. Only rank 0's answer on the clock counts (see train_worker)."""
    if step % config.checkpoint_every == 0 or step == config.max_steps:
        return True
    return config.checkpoint_every_minutes is not None and minutes_since_save >= config.checkpoint_every_minutes


def validation_loss(engine, val, rank: int, workers: int, config: TrainConfig, device) -> float:
    # Every rank must run the same number of forward passes under ZeRO-3, since they gather
    # parameters together; so whole global batches only, and the same first rows every time
    # so curves compare step to step.
    # A held-out set smaller than one global batch is still scored: its rows wrap around.
    per_batch = config.micro_batch * workers
    if len(val) == 0:
        return float("nan")
    batches = max(1, min(len(val) // per_batch, config.eval_batches))
    engine.eval()
    total = torch.zeros((), device=device)
    with torch.no_grad():
        for b in range(batches):
            start = b * per_batch + rank * config.micro_batch
            out = engine(**model_inputs(val, np.arange(start, start + config.micro_batch) % len(val), device))
            total += out.loss.detach().float()
    dist.all_reduce(total)
    engine.train()
    return total.item() / (batches * workers)
