"""Training-loop overhead on CPU: solo's loop (Ray Train + DeepSpeed, offload off) against a plain
single-process PyTorch loop on the same model, batch and token shards.

    .venv/bin/python -m benchmarks.train_overhead [--presets demo 125m] [--seq-len 256] [--global-batch 16]
                                                  [--micro-batch 8] [--warmup 10] [--steps 10] [--zero-stages 3 0]

Token shards are built once from real text (tinyshakespeare and WikiText-2) with solo's own code
(`solo.tokens.tokenizer.train_bpe`, `solo.tokens.shards.pack` and `ShardWriter`). For each preset:
  - plain: `LlamaForCausalLM` of the same preset, torch AdamW (fp32), gradient accumulation to the
    same global batch, clipping at the same norm, the same learning-rate schedule and the same rows
    (`ShardLoader`), in this process with `torch.set_num_threads(N)`;
  - ours: `solo.train.loop.run_training` on a private Ray of 2 CPUs, `workers` 1 and 2 (one CPU each: Ray
    sets OMP_NUM_THREADS, so torch threads, to a worker's CPUs), no offload, fp32, at each ZeRO stage
    of `--zero-stages` (3, the project's default, and 0: what ZeRO-3's partitioning costs by itself).
Both time `--steps` optimizer steps after `--warmup` steps: ours from its own tokens/s window
(log_every = steps, so the window holds one log line and one Ray Train report, as every window of
a real run does), plain with a clock around the same steps. Each `workers=W` run of ours is compared
with the plain loop on W threads: the same cores. Overhead ratio = plain tokens/s ÷ our tokens/s
(ours ÷ plain time); goal ≤ 1.25. Writes benchmarks/results/train_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.record import DATA, Conditions, ran_on, record

RAY_CPUS = 2


def build_shards(folder: Path, seq_len: int, vocab_size: int) -> Path:
    """A BPE tokenizer and training rows from real text, with solo's own tokenizer and packing code."""
    from solo.tokens import train_bpe as bpe
    from solo.tokens.shards import ShardWriter, pack, token_dtype

    texts = [(DATA / "tinyshakespeare" / "input.txt").read_text(), (DATA / "wikitext2" / "valid.txt").read_text()]
    tokenizer = bpe.train_bpe(texts, vocab_size=vocab_size, min_frequency=2)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    dtype = token_dtype(len(tokenizer))
    rows, _ = pack(encoded, tokenizer.eos_token_id, seq_len, dtype)
    writer = ShardWriter(folder / "train", seq_len, dtype, rows_per_shard=4096)
    for row in rows:
        writer.add(row)
    writer.close()
    return folder


def train_config(args, preset: str, workers: int, zero_stage: int):
    from solo.config import load_config
    from solo.train.config import TrainConfig

    return load_config(TrainConfig, None, [
        f"model={preset}", f"workers={workers}", "device=cpu", f"micro_batch={args.micro_batch}",
        f"global_batch={args.global_batch}", f"max_steps={args.warmup + args.steps}", f"log_every={args.steps}",
        f"eval_every={10**6}", f"checkpoint_every={10**6}", f"strategy.zero_stage={zero_stage}",
        "optim.name=adamw", "optim.schedule=cosine",  # the plain loop's optimizer and schedule
        "strategy.offload_optimizer=none", "strategy.offload_params=none", "strategy.precision=fp32"])


def plain_loop(config, work: Path, threads: int, warmup: int) -> dict:
    """The peer: one process, no Ray, no DeepSpeed, no torch.distributed; the same steps as ours."""
    import torch
    from transformers import LlamaForCausalLM

    from solo.tokens.shards import ShardLoader, TokenShards
    from solo.tokens.tokenizer import load, stop_token_ids
    from solo.train import presets
    from solo.train.schedule import learning_rate

    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    shards = TokenShards(work / "train")
    tokenizer = load(work / "tokenizer")
    llama = presets.llama_config(config.model, vocab_size=len(tokenizer), seq_len=shards.seq_len,
                                 eos_token_id=stop_token_ids(tokenizer))
    model = LlamaForCausalLM._from_config(llama)
    model.train()
    o = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    accumulation = config.global_batch // config.micro_batch
    batches = ShardLoader(shards, 0, 1, config.micro_batch, config.seed).indices()
    loss = float("nan")
    for step in range(config.max_steps):
        if step == warmup:
            started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        for _ in range(accumulation):
            input_ids, labels = shards.rows(next(batches))
            out = model(input_ids=torch.from_numpy(input_ids), labels=torch.from_numpy(labels), use_cache=False)
            (out.loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.item()
    seconds = time.perf_counter() - started
    steps = config.max_steps - warmup
    return {"threads": threads, "tokens_per_s": round(steps * config.global_batch * shards.seq_len / seconds, 1),
            "seconds": round(seconds, 2), "last_loss": round(loss, 4),
            "parameters": presets.parameter_count(llama)}


def our_loop(config, work: Path, output: Path) -> dict:
    """solo's own `run_training`; tokens/s of the window after the warm-up, from its metrics.csv."""
    import csv

    from solo.train.job import TrainJob
    from solo.train.launch import run_training

    output.mkdir(parents=True)
    started = time.perf_counter()
    run_training(TrainJob(config=config, train_dir=str(work / "train"), val_dir=None,
                          tokenizer_dir=str(work / "tokenizer"), output_dir=str(output)))
    rows = list(csv.DictReader((output / "metrics.csv").open()))
    measured = rows[-1]  # the window of steps warmup+1 … warmup+steps
    return {"workers": config.workers, "torch_threads_per_worker": worker_threads(),
            "tokens_per_s": float(measured["tokens_per_s"]), "last_loss": float(measured["loss"]),
            "window_steps": int(measured["step"]) - int(rows[-2]["step"]),
            "whole_run_seconds": round(time.perf_counter() - started, 1)}


def worker_threads() -> int:
    """torch threads of a 1-CPU Ray actor, as a Ray Train worker is (Ray sets OMP_NUM_THREADS to its CPUs)."""
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def threads(self) -> int:
            import torch

            return torch.get_num_threads()

    probe = Probe.remote()
    try:
        return ray.get(probe.threads.remote())
    finally:
        ray.kill(probe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["demo"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--zero-stages", type=int, nargs="+", choices=[0, 1, 2, 3], default=[3, 0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    args = parser.parse_args()
    if args.warmup < args.steps:
        # Our first tokens/s window holds the warm-up; it must be a whole window for the next one
        # to start exactly after it.
        parser.error("--warmup must be at least --steps (ours logs every --steps steps)")
    if args.warmup % args.steps:
        parser.error("--warmup must be a multiple of --steps")

    import ray

    from solo.runtime import worker_env

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    conditions = Conditions()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="solo-train-overhead-") as tmp:
        work = build_shards(Path(tmp), args.seq_len, args.vocab_size)
        ray.init(address="local", num_cpus=RAY_CPUS, runtime_env={"env_vars": worker_env()})
        try:
            for preset in args.presets:
                for workers in args.workers:
                    plain = plain_loop(train_config(args, preset, workers, 0), work, threads=workers,
                                       warmup=args.warmup)
                    print(f"{preset} plain, {workers} threads: {plain}", flush=True)
                    for stage in args.zero_stages:
                        config = train_config(args, preset, workers, stage)
                        ours = our_loop(config, work, Path(tmp) / f"{preset}-zero{stage}-w{workers}")
                        print(f"{preset} ours, ZeRO-{stage}, {workers} workers: {ours}", flush=True)
                        runs[f"{preset}_zero{stage}_w{workers}"] = {
                            "preset": preset, "zero_stage": stage, "plain": plain, "ours": ours,
                            "overhead_ratio": round(plain["tokens_per_s"] / ours["tokens_per_s"], 3)}
        finally:
            ray.shutdown()
    result = {
        **conditions.end(),
        "seq_len": args.seq_len, "vocab_size": args.vocab_size, "global_batch": args.global_batch,
        "micro_batch": args.micro_batch, "warmup_steps": args.warmup, "measured_steps": args.steps,
        "zero_stages": args.zero_stages, "offload": "none", "precision": "fp32", "runs": runs,
        "goal": "overhead_ratio <= 1.25",
    }
    record("train_overhead", result, markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        "# Training-loop overhead on CPU: Ray Train + DeepSpeed against a plain PyTorch loop", "",
        ran_on(r), "",
        f"Rows of {r['seq_len']} tokens (tinyshakespeare and WikiText-2, a {r['vocab_size']:,}-token BPE), global "
        f"batch {r['global_batch']} sequences in micro-batches of {r['micro_batch']}, AdamW, fp32, gradient clipping, "
        f"{r['measured_steps']} optimizer steps timed after {r['warmup_steps']} of warm-up. *ours*: "
        f"`solo.train.loop.run_training` (Ray Train, DeepSpeed at ZeRO stage "
        + "/".join(map(str, r["zero_stages"])) + ", no offload, gloo between workers) "
        "on a private Ray of 2 CPUs, one CPU and so one torch thread per worker; *plain*: the same model and "
        "rows in one process, torch AdamW, `torch.set_num_threads` = our worker count (the same cores).", "",
        "| preset | parameters | ZeRO stage (ours) | workers (ours) / threads (plain) | plain tokens/s | our tokens/s "
        "| overhead (plain ÷ ours) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in r["runs"].values():
        lines.append(f"| {run['preset']} | {run['plain']['parameters'] / 1e6:.1f}M | {run['zero_stage']} | "
                     f"{run['ours']['workers']} × "
                     f"{run['ours']['torch_threads_per_worker']} / {run['plain']['threads']} | "
                     f"{run['plain']['tokens_per_s']:,.0f} | {run['ours']['tokens_per_s']:,.0f} | "
                     f"**{run['overhead_ratio']}×** |")
    lines += ["", "Goal: overhead ≤ 1.25×.", "",
              "Reading it: the gap between the ZeRO-3 and ZeRO-0 rows is ZeRO-3's own work (a gather and a "
              "release of every layer's parameters in the forward and again in the backward, and gradient "
              "partitioning), which buys memory, not speed; on one CPU worker there is nothing to shard "
              "across. The ZeRO-0 rows are Ray Train and DeepSpeed's loop itself: DeepSpeed's fused CPU Adam "
              "against torch's AdamW, plus one log line and one Ray Train report per window. A model that "
              "fits in memory trains fastest at stage 0-2 with no offload (`configs/pretrain/shakespeare-cpu.yaml` "
              "does); stage 3 and offload are for the models that do not fit.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
