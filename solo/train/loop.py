"""The training loop: DeepSpeed (ZeRO 0–3, CPU or NVMe offload) or the layer-streaming engine
(solo.train.stream) on each worker, driven by Ray Train or, without Ray, by the `deepspeed` launcher.

One loop serves pretraining and fine-tuning: rows of (input_ids, labels) in, a Hugging Face
model out. The model is stock `LlamaForCausalLM`; ZeRO sharding and offload are applied to it
from outside through the DeepSpeed config, which is generated from `TrainConfig` here and
never kept by hand. `train_worker` needs only torch.distributed and a `CheckpointSink`
(solo.train.checkpoints), so the loop itself does not depend on Ray.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from solo.train.checkpoints import (UNIVERSAL, CheckpointSink, FolderSink, RaySink, check_resumable,
                              convert_for_worker_count, resumes_universal)
from solo.train.config import TrainConfig
from solo.errors import SoloError
from solo.store import Restart, read_manifest, write_manifest

# Dense bf16 peak of GPUs our users train on, for MFU. A GPU not listed reports no MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.2,
               "RTX 3090": 71.0, "A10": 125.0, "L4": 121.0}


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; paths are in storage every worker sees."""

    config: TrainConfig
    train_dir: str           # token shards of the training split
    val_dir: str | None      # token shards of the validation split
    tokenizer_dir: str
    output_dir: str          # the stage's folder: model/, metrics.csv, tensorboard/, checkpoints
    init_model_dir: str | None = None  # start from these weights (fine-tuning) instead of from scratch
    val_bytes_per_token: float | None = None  # to turn validation loss into bits per byte


def use_cuda(config: TrainConfig) -> bool:
    import torch

    return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())


def deepspeed_config(config: TrainConfig, workers: int) -> dict:
    strategy = config.strategy
    accumulation = config.global_batch // (config.micro_batch * workers)
    zero: dict = {"stage": strategy.zero_stage}
    if strategy.offload_optimizer != "none":
        zero["offload_optimizer"] = offload_target(strategy.offload_optimizer, strategy.nvme_path)
    if strategy.offload_params != "none":
        zero["offload_param"] = offload_target(strategy.offload_params, strategy.nvme_path)
    if strategy.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if strategy.zero_stage >= 1:
        zero["reduce_bucket_size"] = REDUCE_BUCKET_ELEMENTS
    optimizer_params: dict = {}
    if config.trains_adapters():
        # LoRA/QLoRA: plain data parallelism (ZeRO stage 0), whatever `strategy` says. ZeRO-3 would
        # have to partition the frozen base, and a 4-bit bitsandbytes weight (uint8 plus its
        # quantization state) cannot be split and regathered by it; what is left to shard, the
        # adapters and their optimizer state, is a few MB, so neither sharding nor offload pays.
        # torch's AdamW, since DeepSpeed's fused one needs CUDA and its CPU one needs offload.
        zero = {"stage": 0}
        optimizer_params["torch_adam"] = True
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": config.global_batch,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": strategy.precision == "bf16"},
        "fp16": {"enabled": strategy.precision == "fp16"},
        "optimizer": {"type": "AdamW", "params": {
            "lr": config.optim.lr, "betas": [config.optim.beta1, config.optim.beta2],
            "weight_decay": config.optim.weight_decay, **optimizer_params}},
        "steps_per_print": 10**9,  # our own log line replaces DeepSpeed's
        "wall_clock_breakdown": False,
        **({"aio": NVME_AIO} if "nvme" in (strategy.offload_optimizer, strategy.offload_params) else {}),
    }


# Gradients are reduced through a bucket of this many elements (DeepSpeed's `reduce_bucket_size`; its default,
# 5e8, is sized for GPU clusters). The bucket lives where the gradients are computed and fills up to it, or to the
# whole model when smaller, and ZeRO-3's reduce-scatter copies it (on the CPU twice), so at 5e8 a 125M model held
# its gradients three more times in host memory (0.9 GB measured, benchmarks/results/planner_vs_measured.md).
# 16M elements still moves tens of MB per collective, where NCCL and gloo run at full bandwidth. The planner
# counts this bucket (solo.train.planner.reduce_bucket_bytes).
REDUCE_BUCKET_ELEMENTS = 2**24

# libaio settings for NVMe offload: DeepSpeed's defaults (1 MiB blocks, 8 requests in flight per thread).
NVME_AIO = {"block_size": 1048576, "queue_depth": 8, "intra_op_parallelism": 1, "single_submit": False,
            "overlap_events": True}


def offload_target(device: str, nvme_path: str | None) -> dict:
    """DeepSpeed's `offload_optimizer`/`offload_param` section; with nvme, tensors are swapped to files
    under `nvme_path` (DeepSpeed adds zero_stage_3/<what>/rank<N>/ below it)."""
    target: dict = {"device": device, "pin_memory": False}
    if device == "nvme":
        target["nvme_path"] = str(Path(nvme_path).expanduser().resolve())
    return target


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio × lr` at `max_steps`."""
    o = config.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, config.max_steps - o.warmup_steps)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def peak_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def host_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


# ---------------------------------------------------------------- the loop


def _record_restart(output_dir: Path, step: int) -> None:
    manifest = read_manifest(output_dir)
    if manifest is not None:
        manifest.restarts.append(Restart(at=time.time(), resumed_from_step=step, reason="resumed from checkpoint"))
        write_manifest(output_dir, manifest)


def param_swap_buffer_elements(job: TrainJob) -> int:
    """Elements of one NVMe swap buffer for parameters: the largest weight's (the embedding's or an MLP
    projection's) partition on one worker, which DeepSpeed swaps whole through one buffer. Its default,
    1e8, is too small for a 7B embedding on one GPU, and pins 2 GB of host memory for a small model."""
    import torch.distributed as dist
    from transformers import AutoConfig

    from solo.tokens.tokenizer import load

    if job.init_model_dir:
        shape = AutoConfig.from_pretrained(job.init_model_dir)
        vocab, hidden, intermediate = shape.vocab_size, shape.hidden_size, shape.intermediate_size
    else:
        from solo.train.presets import PRESETS

        preset = PRESETS[job.config.model]
        vocab, hidden, intermediate = len(load(job.tokenizer_dir)), preset.hidden, preset.intermediate
    return -(-max(vocab, intermediate) * hidden // dist.get_world_size())


def build_model(job: TrainJob, ds_config: dict | None, device):
    """The model, created (or loaded) straight into ZeRO-3 partitions when stage 3 is on (no ds_config:
    whole, for the stream engine).

    Returns the model and the `HfDeepSpeedConfig` that must stay alive while it trains:
    transformers holds it weakly, and it is what tells transformers that ZeRO-3 is on.
    """
    from transformers import LlamaForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from solo.train import presets
    from solo.tokens.tokenizer import load, stop_token_ids

    if ds_config and ds_config["zero_optimization"].get("offload_param", {}).get("device") == "nvme":
        ds_config["zero_optimization"]["offload_param"]["buffer_size"] = param_swap_buffer_elements(job)
    zero3 = HfDeepSpeedConfig(ds_config) if ds_config and ds_config["zero_optimization"]["stage"] == 3 else None
    if job.config.trains_adapters():
        from solo.train.adapters import adapter_model

        return adapter_model(job.init_model_dir, job.config, device), zero3
    if job.init_model_dir:
        return LlamaForCausalLM.from_pretrained(job.init_model_dir, dtype="float32"), zero3
    tokenizer = load(job.tokenizer_dir)
    seq_len = json.loads((Path(job.train_dir) / "index.json").read_text())["seq_len"]
    # No pad id in the model: padded positions carry label -100, and an embedding padding_idx
    # would have transformers zero a row that ZeRO-3 has already partitioned away.
    llama = presets.llama_config(job.config.model, vocab_size=len(tokenizer), seq_len=seq_len,
                                 eos_token_id=stop_token_ids(tokenizer))
    return LlamaForCausalLM._from_config(llama), zero3


def make_engine(job: TrainJob, workers: int, device, load_universal: bool = False):
    """The engine `engine:` names, both driven alike by train_worker: DeepSpeed's (ZeRO, offload) or the
    layer-streaming one (solo.train.stream). Returns the engine, the optimizer whose param_groups take the
    LR, the micro-batches per step, and what must stay alive while it trains. `load_universal`: the
    checkpoint to resume is DeepSpeed's universal one (written by another worker count)."""
    import deepspeed

    config = job.config
    ds_config = deepspeed_config(config, workers)
    if load_universal:
        ds_config["checkpoint"] = {"load_universal": True}
    accumulation = ds_config["gradient_accumulation_steps"]
    if config.engine == "stream":
        from solo.train.stream import StreamEngine

        model, _ = build_model(job, None, device)
        model.train()
        engine = StreamEngine(model, config, device, accumulation)
        return engine, engine.optimizer, accumulation, None
    model, zero3_alive = build_model(job, ds_config, device)
    # from_pretrained hands back a model in eval mode, where transformers skips activation
    # checkpointing and dropout (LoRA's included) is off.
    model.train()
    if config.strategy.activation_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    return engine, optimizer, accumulation, zero3_alive


def train_worker(job: TrainJob, sink: CheckpointSink) -> dict:
    """Runs on every worker; torch.distributed is already up. Returns rank 0's final metrics."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from solo.train import presets
    from solo.tokens.shards import LoaderState, ShardLoader, TokenShards

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
    engine, optimizer, accumulation, _zero3_alive = make_engine(job, workers, device, load_universal=universal)
    trainable = [p for p in engine.module.parameters() if p.requires_grad]

    step, state = 0, LoaderState()
    if restored is not None:
        check_resumable(restored, config.engine)
        # The tag DeepSpeed recorded in `latest` (`latest_universal`); adapter checkpoints hold the adapters alone.
        _, client = engine.load_checkpoint(str(restored / UNIVERSAL if universal else restored),
                                           load_module_strict=not config.trains_adapters())
        step, state = client["step"], LoaderState(**client["loader"])
        torch.set_rng_state(client["torch_rng"])
        if rank == 0:
            _record_restart(output, step)
            print(f"resumed from step {step} (epoch {state.epoch}, row {state.position})", flush=True)

    train = ShardLoader(TokenShards(Path(job.train_dir)), rank, workers, config.micro_batch, config.seed, state)
    batches = train.indices()
    val = TokenShards(Path(job.val_dir)) if job.val_dir and (Path(job.val_dir) / "index.json").exists() else None
    seq_len = train.shards.seq_len
    flops_per_token = presets.flops_per_token(engine.module.config, seq_len)
    peak = peak_tflops()
    log = MetricsLog(output, enabled=rank == 0)
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
        print(f"{what}; {flops_per_token / 1e6:.1f} MFLOPs/token; {workers} workers × micro-batch "
              f"{config.micro_batch} × {accumulation} accumulation = {config.global_batch} sequences/step; "
              f"engine ready in {time.time() - setup_started:.1f} s", flush=True)

    metrics: dict = {}
    tokens_per_step = config.global_batch * seq_len
    started, window_start, window_steps = time.time(), time.time(), 0
    first_step = step
    last_save = time.time()
    while step < config.max_steps:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for _ in range(accumulation):
            out = engine(**model_inputs(train.shards, next(batches), device))
            engine.backward(out.loss)
            engine.step()
            loss_sum += out.loss.detach().float()
        step += 1
        window_steps += 1
        # Workers' clocks differ, so rank 0 alone decides a time-based save; its vote rides on the loss
        # all-reduce (a sum, others add 0) so every rank saves at the same step without another collective.
        save_vote = float(rank == 0 and checkpoint_due(step, config, (time.time() - last_save) / 60))
        reduced = torch.stack([loss_sum / accumulation, torch.tensor(save_vote, device=device)])
        dist.all_reduce(reduced)
        loss, save_now = reduced[0].item() / workers, reduced[1].item() > 0.5

        if step % config.log_every == 0 or step == config.max_steps:
            elapsed = time.time() - window_start
            tokens_per_s = window_steps * tokens_per_step / elapsed
            done = step - first_step
            eta = (time.time() - started) / done * (config.max_steps - step)
            metrics = {"step": step, "loss": round(loss, 4), "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                       "tflops": round(tokens_per_s * flops_per_token / 1e12, 4),
                       "host_peak_gb": round(host_peak_gb(), 3), "eta_s": round(eta, 1)}
            if peak:
                metrics["mfu"] = round(tokens_per_s * flops_per_token / 1e12 / (peak * workers), 4)
            if cuda:
                metrics["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
            if val is not None and (step % config.eval_every == 0 or step == config.max_steps):
                metrics["val_loss"] = round(validation_loss(engine, val, rank, workers, config, device), 4)
                if job.val_bytes_per_token:
                    metrics["val_bpb"] = round(metrics["val_loss"] / math.log(2) / job.val_bytes_per_token, 4)
            log.write(metrics)
            window_start, window_steps = time.time(), 0

        if save_now:
            last_save = time.time()
            client_state = {"step": step, "loader": vars(train.state).copy(), "torch_rng": torch.get_rng_state()}
            sink.save(engine, step, client_state, metrics or {"step": step, "loss": loss},
                      exclude_frozen=config.trains_adapters())
        elif metrics.get("step") == step:
            sink.report(metrics)

    export_model(engine, job, rank)
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
    import numpy as np
    import torch
    import torch.distributed as dist

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


def model_inputs(shards, indices, device) -> dict:
    """The model's keyword arguments for these rows: position ids too where rows are packed
    conversations (they are what keeps one conversation from attending to another; see solo.train.sft)."""
    import torch

    input_ids, labels = shards.rows(indices)
    # No KV cache: with one, transformers skips its packed-sequence detection and the position
    # restarts would no longer separate conversations (and training never reads a cache anyway).
    inputs = {"input_ids": torch.from_numpy(input_ids).to(device), "labels": torch.from_numpy(labels).to(device),
              "use_cache": False}
    positions = shards.positions(indices)
    if positions is not None:
        inputs["position_ids"] = torch.from_numpy(positions).to(device)
    return inputs


def export_model(engine, job: TrainJob, rank: int) -> None:
    """Consolidate the (possibly sharded) weights into a Hugging Face folder on rank 0; for LoRA/QLoRA,
    the adapters in peft's format under adapter/ and, with `merge`, the merged model under model/."""
    if job.config.trains_adapters():
        if rank == 0:
            export_adapters(engine, job)
        return
    if job.config.engine == "deepspeed" and job.config.strategy.zero_stage == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # gathers on every rank, returns on rank 0
    else:
        state_dict = engine.module.state_dict()
    if rank != 0:
        return
    target = Path(job.output_dir) / "model"
    engine.module.save_pretrained(str(target), state_dict=state_dict, safe_serialization=True)
    save_tokenizer(job, target)


def save_tokenizer(job: TrainJob, target: Path) -> None:
    """The tokenizer (with its chat template) and the stop tokens beside the weights, as serving wants them."""
    from transformers import GenerationConfig

    from solo.tokens.tokenizer import load, stop_token_ids

    tokenizer = load(job.tokenizer_dir)
    tokenizer.save_pretrained(str(target))
    GenerationConfig(eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                     max_new_tokens=256).save_pretrained(str(target))


def export_adapters(engine, job: TrainJob) -> None:
    from solo.train.adapters import merge_into_base

    output = Path(job.output_dir)
    # peft's own format: adapter_config.json (naming the base) and adapter_model.safetensors.
    engine.module.save_pretrained(str(output / "adapter"))
    save_tokenizer(job, output / "adapter")
    if job.config.merge:
        merge_into_base(job.init_model_dir, output / "adapter", output / "model")
        save_tokenizer(job, output / "model")


class MetricsLog:
    """A line per logged step on the console, and the same row in metrics.csv and TensorBoard."""

    def __init__(self, output: Path, enabled: bool):
        self.enabled = enabled
        self.file = self.writer = self.tensorboard = None
        if not enabled:
            return
        path = output / "metrics.csv"
        self.file = path.open("a", newline="")
        self.header_written = path.stat().st_size > 0
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(output / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        eta = metrics["eta_s"]
        line = (f"step {metrics['step']:>6} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                f"{metrics['tokens_per_s']:,.0f} tok/s | ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        for key in ("val_loss", "val_bpb", "mfu", "gpu_peak_gb", "host_peak_gb"):
            if key in metrics:
                line += f" | {key} {metrics[key]}"
        print(line, flush=True)
        fields = ["step", "loss", "lr", "tokens_per_s", "tflops", "mfu", "val_loss", "val_bpb", "gpu_peak_gb",
                  "host_peak_gb", "eta_s"]
        writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        if not self.header_written:
            writer.writeheader()
            self.header_written = True
        writer.writerow(metrics)
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, metrics["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard:
            self.tensorboard.close()


# ---------------------------------------------------------------- drivers


def _ray_worker_entry(loop_config: dict) -> None:
    from solo.runtime import init_deepspeed_group

    init_deepspeed_group(use_cuda(loop_config["job"].config))
    train_worker(loop_config["job"], RaySink())


def start_launched(config: TrainConfig) -> None:
    """torch.distributed from the `deepspeed`/`torchrun` launcher's environment, for a run without Ray."""
    from solo.runtime import init_deepspeed_group, worker_env

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
    from solo.train.planner import resolve_auto_strategy
    from solo.runtime import launched_rank, wait_for_all_ranks

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

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

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
