"""Each `loop:` switch on the CPU, on and off: what `auto` should pick there (solo.train.fast_path.CPU_DEFAULTS).

    .venv/bin/python -m benchmarks.loop_switches_cpu [--repeats 3] [--warmup 6] [--steps 6] [--threads 1]

The demo preset at the CPU default batch (rows of 256 tokens from a 4,096-token BPE over tinyshakespeare and
WikiText-2, built with solo's own code; micro-batch 8, global batch 16), one worker: `solo.train.loop.train_worker`
in one gloo process, with `--threads` torch threads (1: what a Ray worker given one CPU computes on, as the
CPU default of 2 workers on 2 cores gives each), ZeRO-0, fp32, nothing offloaded. Each arm sets one switch and
leaves the others at their CPU default (off, plain cross-entropy):
  - off:          every switch off, the default recipe's optimizer (Muon + AdamW);
  - compile:      loop.compile=true (torch.compile of the model);
  - loss:         loop.loss=chunked (the head and the cross-entropy 8,192 tokens at a time, solo.train.loss);
  - prefetch:     loop.prefetch=true (the next step's rows read ahead);
  - adamw:        optim.name=adamw, loop.fused_adamw=false (the baseline of the next);
  - fused_adamw:  optim.name=adamw, loop.fused_adamw=true (torch's fused AdamW).
Every arm is a process of its own (compiled code and thread pools do not carry over), run `--repeats` times
in turn (off, compile, loss, prefetch, adamw, fused_adamw, then again), so a change in the machine's load
falls on every arm alike; tokens/s is the loop's own window over `--steps` steps after `--warmup` (which
holds compilation), and each arm's figure is the median of its repeats. Ratio = on ÷ off (fused_adamw ÷ adamw,
the rest ÷ off): above 1 the switch made the CPU faster.
Writes benchmarks/results/loop_switches_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import Conditions, ran_on, record
from benchmarks.train_overhead import build_shards

OFF = ["loop.compile=false", "loop.loss=plain", "loop.prefetch=false", "loop.fused_adamw=false"]
ARMS = {  # each arm: the settings on top of OFF
    "off": [],
    "compile": ["loop.compile=true"],
    "loss": ["loop.loss=chunked"],
    "prefetch": ["loop.prefetch=true"],
    "adamw": ["optim.name=adamw"],
    "fused_adamw": ["optim.name=adamw", "loop.fused_adamw=true"],
}
# Each switch: the arm with it on, the arm with it off, and the `loop:` key CPU_DEFAULTS decides.
SWITCHES = {"compile": ("compile", "off"), "loss": ("loss", "off"), "prefetch": ("prefetch", "off"),
            "fused_adamw": ("fused_adamw", "adamw")}
# Repeats of one arm on this shared 2-core machine differ by a few percent: a ratio closer to 1 than this is
# no measured difference, and the plain computation (the switch off) stays.
NOISE = 0.03


def one_arm(args, arm: str, work: Path) -> dict:
    """In a child process: train the demo preset with the arm's settings; the timed window's tokens/s."""
    from solo.runtime import join_one_process_group, worker_env

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    import torch

    from solo.config import load_config
    from solo.train.checkpoints import CheckpointSink
    from solo.train.config import TrainConfig
    from solo.train.job import TrainJob
    from solo.train.loop import train_worker

    torch.set_num_threads(args.threads)
    join_one_process_group(cuda=False)
    config = load_config(TrainConfig, None, [
        "model=demo", "workers=1", "device=cpu", f"micro_batch={args.micro_batch}",
        f"global_batch={args.global_batch}", f"max_steps={args.warmup + args.steps}", f"log_every={args.steps}",
        f"eval_every={10**6}", f"checkpoint_every={10**6}", "strategy.zero_stage=0",
        "strategy.offload_optimizer=none", "strategy.offload_params=none", "strategy.precision=fp32",
        *OFF, *ARMS[arm]])
    output = Path(tempfile.mkdtemp(prefix=f"solo-switch-{arm}-", dir=work))
    metrics = train_worker(TrainJob(config=config, train_dir=str(work / "train"), val_dir=None,
                                    tokenizer_dir=str(work / "tokenizer"), output_dir=str(output)), CheckpointSink())
    return {"tokens_per_s": metrics["tokens_per_s"], "loss": metrics["loss"]}


def run_arm(args, arm: str, work: Path) -> tuple[float, float]:
    """The arm's tokens/s in the timed window, and its whole run's seconds (start-up and compilation too)."""
    command = [sys.executable, "-m", "benchmarks.loop_switches_cpu", "--one", arm, "--work", str(work),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
               "--micro-batch", str(args.micro_batch), "--global-batch", str(args.global_batch)]
    # One thread per OpenMP runtime as a Ray worker of one CPU has it, sleeping between parallel regions
    # (spinning threads of concurrent processes starve each other on a shared 2-core machine).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "passive"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{arm} failed (exit {done.returncode}):\n" + (done.stdout + done.stderr)[-4000:])
    return json.loads(line[len("RESULT "):])["tokens_per_s"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup % args.steps:
        parser.error("--warmup must be a multiple of --steps (the loop logs every --steps steps)")
    if args.one:
        print("RESULT " + json.dumps(one_arm(args, args.one, Path(args.work))), flush=True)
        return

    conditions = Conditions()
    measured: dict[str, list[float]] = {arm: [] for arm in args.arms}
    whole_run_s: dict[str, list[float]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory(prefix="solo-loop-switches-") as tmp:
        work = build_shards(Path(tmp), args.seq_len, args.vocab_size)
        for repeat in range(args.repeats):
            for arm in args.arms:
                tokens_per_s, seconds = run_arm(args, arm, work)
                measured[arm].append(tokens_per_s)
                whole_run_s[arm].append(round(seconds, 1))
                print(f"repeat {repeat + 1}, {arm}: {tokens_per_s:,.0f} tokens/s, {seconds:.0f} s in all", flush=True)
    arms = {arm: {"settings": ARMS[arm], "tokens_per_s": runs, "median_tokens_per_s": statistics.median(runs),
                  "whole_run_s": whole_run_s[arm], "median_whole_run_s": statistics.median(whole_run_s[arm])}
            for arm, runs in measured.items()}
    switches = {}
    for switch, (on, off) in SWITCHES.items():
        if on in arms and off in arms:
            ratio = arms[on]["median_tokens_per_s"] / arms[off]["median_tokens_per_s"]
            switches[switch] = {"on": on, "off": off, "ratio_on_over_off": round(ratio, 3),
                                "faster_on": ratio >= 1 + NOISE, "slower_on": ratio <= 1 - NOISE,
                                "start_up_s_on_minus_off": round(arms[on]["median_whole_run_s"]
                                                                 - arms[off]["median_whole_run_s"], 1)}
    result = {**conditions.end(), "preset": "demo", "seq_len": args.seq_len, "vocab_size": args.vocab_size,
              "micro_batch": args.micro_batch, "global_batch": args.global_batch, "threads": args.threads,
              "warmup_steps": args.warmup, "measured_steps": args.steps, "repeats": args.repeats,
              "arms": arms, "switches": switches}
    record("loop_switches_cpu", result, markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        "# The loop's switches on the CPU, each on and off", "",
        ran_on(r), "",
        f"The demo preset, rows of {r['seq_len']} tokens ({r['vocab_size']:,}-token BPE), micro-batch "
        f"{r['micro_batch']}, global batch {r['global_batch']}, one worker on {r['threads']} thread(s) "
        f"(`solo.train.loop.train_worker`, one gloo process), ZeRO-0, fp32; {r['measured_steps']} steps timed after "
        f"{r['warmup_steps']}, each arm a process of its own, {r['repeats']} repeats in turn; the median.", "",
        "| arm | settings (others off) | tokens/s, each repeat | median tokens/s | median seconds, whole run |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for arm, a in r["arms"].items():
        settings = " ".join(f"`{s}`" for s in a["settings"]) or "every switch off"
        lines.append(f"| {arm} | {settings} | {', '.join(f'{t:,.0f}' for t in a['tokens_per_s'])} | "
                     f"{a['median_tokens_per_s']:,.0f} | {a['median_whole_run_s']:.0f} |")
    lines += ["", "| switch | on ÷ off, tokens/s | extra seconds a run, on | measured |", "| --- | ---: | ---: | --- |"]
    for switch, s in r["switches"].items():
        verdict = "faster" if s["faster_on"] else "slower" if s["slower_on"] else f"no difference (within {NOISE:.0%})"
        lines.append(f"| `loop.{switch}` ({s['on']} ÷ {s['off']}) | **{s['ratio_on_over_off']}×** | "
                     f"{s['start_up_s_on_minus_off']:+.0f} | {verdict} |")
    lines += ["", "`solo.train.fast_path.CPU_DEFAULTS` turns a switch on under `auto` on the CPU only where it "
              f"measured faster here by more than {NOISE:.0%} (repeats of one arm on this shared machine differ by "
              "that much), counting what it adds to a run's start-up. With a load average above the core count, "
              "other work shared the cores.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
