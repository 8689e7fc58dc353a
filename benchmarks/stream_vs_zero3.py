"""Layer streaming (`engine: stream`) against DeepSpeed's CPU offload (ZeRO-3 with the optimizer and the
parameters in host memory; ZeRO-2 with the optimizer there), on one device, same preset and batch.

    .venv/bin/python -m benchmarks.stream_vs_zero3 [--presets demo] [--seq-len 256] [--micro-batch 4]
        [--global-batch 16] [--warmup 4] [--steps 4] [--device-memory-gb 24] [--run-timeout S] [--results NAME]
        [--baseline-activation-checkpointing] [--device cpu|cuda] [--resume]
GPU (one card, bf16, a 24 GB device-memory cap; 64 rows of 2,048 tokens = 131,072 tokens a step, a 32k BPE; the
DeepSpeed baselines with activation checkpointing, without which ZeRO-3 ran out of the cap at 2.7b;
benchmarks/gpu_run.sh runs it on the device machine):
    .venv/bin/python -m benchmarks.stream_vs_zero3 --presets 1.3b 2.7b --seq-len 2048 --vocab-size 32000 \\
        --micro-batch 4 --global-batch 64 --warmup 1 --steps 1 --device-memory-gb 24 \\
        --baseline-activation-checkpointing --run-timeout 240 --results stream_vs_zero3_128k
(stream_vs_zero3.json holds the H200 run at 32,768 tokens a step, ZeRO-3 and stream only, that the planner's speed
model is fitted to and tests/unit/test_plan_config.py reads: the 128k setting is recorded beside it.)
CPU dry run (the demo preset; both "devices" are host memory, so it checks that the benchmark runs, not speed):
    .venv/bin/python -m benchmarks.stream_vs_zero3 --device cpu

Every engine runs solo's own loop (`solo.train.loop.train_worker`, one process, a one-rank process group) on
the same token rows (tinyshakespeare and WikiText-2 through solo's BPE and packing), the same preset,
batch, optimizer (AdamW) and schedule, the `loop:` switches at auto (what they resolve to on that engine):
*zero3* is `engine: deepspeed` at ZeRO-3 with the optimizer and the parameters offloaded to CPU, *zero2*
ZeRO-2 with the optimizer offloaded to CPU (DeepSpeed's CPU Adam on the host's cores), *stream* is
`engine: stream`. Each run is a process of its own, so the peaks (host RSS, device memory) are its own; with
a device-memory cap the process may use only that much of the card
(`torch.cuda.set_per_process_memory_fraction`), and a run that runs out (of memory, or of `--run-timeout`
seconds) is recorded as such. tokens/s is the loop's own window over `--steps` steps after `--warmup`; all
with OMP_WAIT_POLICY=passive (see run_child). Ratio = stream ÷ the best DeepSpeed offload's tokens/s.
Goals on a GPU: ratio ≥ 1.5×; the stream engine's MFU ≥ 20% at 2.7b. On a CPU every "device" is host
memory: the figures check that the benchmark runs, not the engine's speed.
Writes benchmarks/results/stream_vs_zero3.{json,md} from a GPU (or `--results NAME`), stream_vs_zero3_cpu.{json,md}
from a CPU.
Each preset is written as soon as it is measured; `--resume` keeps the presets a cut-short run wrote
(same device, same settings) and measures the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.record import RESULTS as RESULTS_DIR
from benchmarks.record import Conditions, ran_on, record
from benchmarks.train_overhead import build_shards

ENGINES = ("zero3", "zero2", "stream")
BASELINES = ("zero3", "zero2")  # DeepSpeed's CPU offload, the two ways it is run
# What each DeepSpeed baseline sets in `strategy:`; the stream engine keeps the rest of the strategy's defaults.
OFFLOAD = {"zero3": ["strategy.zero_stage=3", "strategy.offload_optimizer=cpu", "strategy.offload_params=cpu"],
           "zero2": ["strategy.zero_stage=2", "strategy.offload_optimizer=cpu", "strategy.offload_params=none"]}
GOAL_RATIO, GOAL_MFU_27B = 1.5, 0.20
RESULT_NAMES = {"cuda": "stream_vs_zero3", "cpu": "stream_vs_zero3_cpu"}


def one_run(args, engine: str, preset: str, work: Path) -> dict:
    """In a child process: train `preset` with `engine`, return the loop's last metrics."""
    from solo.runtime import join_one_process_group, worker_env

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    import torch

    from solo.config import load_config
    from solo.train.checkpoints import CheckpointSink
    from solo.train.config import TrainConfig
    from solo.train.fast_path import resolve_switches
    from solo.train.job import TrainJob
    from solo.train.loop import train_worker

    cuda = args.device == "cuda"
    if cuda and args.device_memory_gb:
        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.device_memory_gb / total))
    join_one_process_group(cuda)
    config = load_config(TrainConfig, None, [
        f"model={preset}", "workers=1", f"device={args.device}",
        f"engine={'stream' if engine == 'stream' else 'deepspeed'}",
        f"micro_batch={args.micro_batch}", f"global_batch={args.global_batch}",
        f"max_steps={args.warmup + args.steps}", f"log_every={args.steps}", f"eval_every={10**6}",
        f"checkpoint_every={10**6}", f"strategy.precision={'bf16' if cuda else 'fp32'}", "optim.name=adamw",
        *OFFLOAD.get(engine, []),
        *(["strategy.activation_checkpointing=true"] if engine in BASELINES and args.baseline_activation_checkpointing
          else [])])
    output = Path(tempfile.mkdtemp(prefix=f"solo-{engine}-{preset}-", dir=work))
    metrics = train_worker(TrainJob(config=config, train_dir=str(work / "train"), val_dir=None,
                                    tokenizer_dir=str(work / "tokenizer"), output_dir=str(output)), CheckpointSink())
    return {"tokens_per_s": metrics["tokens_per_s"], "loss": metrics["loss"], "mfu": metrics.get("mfu"),
            "gpu_peak_gb": metrics.get("gpu_peak_gb"), "host_peak_gb": metrics["host_peak_gb"],
            "switches": resolve_switches(config, cuda).label(),
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def run_child(args, engine: str, preset: str, work: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.stream_vs_zero3", "--one", engine, preset, "--work", str(work),
               "--device", args.device, "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch),
               "--global-batch", str(args.global_batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--device-memory-gb", str(args.device_memory_gb or 0),
               *(["--baseline-activation-checkpointing"] if args.baseline_activation_checkpointing else [])]
    # OpenMP threads that spin between parallel regions starve each other on an oversubscribed CPU, and the
    # stream engine's many per-layer regions suffered most (demo: 25–140 tokens/s with spinning against
    # 1,300 with sleeping waits at load ~15 on two cores; 2,200 either way on an idle machine): both
    # engines run with sleeping waits. No effect on GPU kernels.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        print(f"{engine} {preset}: timed out after {args.run_timeout:.0f} s", file=sys.stderr, flush=True)
        return {"ok": False, "error": f"timed out after {args.run_timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"ok": True, **json.loads(line[len("RESULT "):])}
    output = (done.stdout + done.stderr).strip().splitlines()
    print(f"{engine} {preset} failed (exit {done.returncode}):", *output[-40:], sep="\n", file=sys.stderr, flush=True)
    tail = output[-3:]
    out_of_memory = any("out of memory" in line.lower() for line in tail)
    return {"ok": False, "error": "out of device memory" if out_of_memory else " | ".join(tail)[-400:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["demo"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device-memory-gb", type=float, default=24.0, help="0: the whole card")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="cpu: the dry run (default: cuda where there is one)")
    parser.add_argument("--baseline-activation-checkpointing", action="store_true",
                        help="the DeepSpeed baselines recompute activations (what lets ZeRO-3 fit 2.7b under 24 GB)")
    parser.add_argument("--results", metavar="NAME",
                        help="write benchmarks/results/NAME.{json,md} (default: stream_vs_zero3 from a GPU, "
                             "stream_vs_zero3_cpu from a CPU)")
    parser.add_argument("--run-timeout", type=float, default=None,
                        help="seconds one engine's run may take; one that takes longer is recorded as timed out")
    parser.add_argument("--resume", action="store_true",
                        help="keep the presets the results file holds from a run with the same settings on the "
                             "same device (one a time limit cut short, say); run the rest")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "PRESET"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup % args.steps:
        parser.error("--warmup must be a multiple of --steps (the loop logs every --steps steps)")
    if args.one:  # the parent passes --device: torch is imported only once the worker's environment is set
        print("RESULT " + json.dumps(one_run(args, *args.one, Path(args.work))), flush=True)
        return

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device == "cuda"
    name, device = args.results or RESULT_NAMES[args.device], torch.cuda.get_device_name() if cuda else "cpu"
    earlier = earlier_runs(name, device, args) if args.resume else {}
    conditions = Conditions()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="solo-stream-vs-zero3-") as tmp:
        work = build_shards(Path(tmp), args.seq_len, args.vocab_size)
        for preset in args.presets:
            measured = {e: earlier[preset][e] for e in ENGINES if e in earlier.get(preset, {})}
            if measured:
                print(f"{preset}: {', '.join(measured)} kept from {RESULTS_DIR / name}.json", flush=True)
            for engine in ENGINES:
                if engine not in measured:
                    measured[engine] = run_child(args, engine, preset, work)
                    print(preset, engine, json.dumps(measured[engine]), flush=True)
                runs[preset] = {**measured, **ratios(measured)}
                # Large presets take minutes an engine: what was measured is on disk before the next begins.
                save(name, args, conditions, runs, earlier, final=False)
    print(markdown(save(name, args, conditions, runs, earlier, final=True)))


def ratios(run: dict) -> dict:
    """stream ÷ each DeepSpeed offload that ran, and `ratio`: stream ÷ the faster of them (`best_offload`)."""
    stream = run.get("stream", {"ok": False})
    ran = {b: run[b]["tokens_per_s"] for b in BASELINES if run.get(b, {}).get("ok")}
    if not stream["ok"] or not ran:
        return {}
    best = max(ran, key=ran.get)
    return {"best_offload": best, "ratio": round(stream["tokens_per_s"] / ran[best], 3),
            **{f"ratio_vs_{b}": round(stream["tokens_per_s"] / tokens, 3) for b, tokens in ran.items()}}


def settings(args) -> dict:
    return {"seq_len": args.seq_len, "vocab_size": args.vocab_size, "micro_batch": args.micro_batch,
            "global_batch": args.global_batch, "tokens_per_step": args.global_batch * args.seq_len,
            "warmup_steps": args.warmup, "measured_steps": args.steps,
            "device_memory_cap_gb": args.device_memory_gb or None,
            "baseline_activation_checkpointing": args.baseline_activation_checkpointing}


def earlier_runs(name: str, device: str, args) -> dict[str, dict]:
    """Each preset's engine runs `name`'s results hold, when measured on this device with these settings."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    differ = {k: (earlier.get(k), v) for k, v in settings(args).items() if earlier.get(k) != v}
    if earlier["device"] != device:
        differ["device"] = (earlier["device"], device)
    if differ:
        found = ", ".join(f"{key}: {there} there, {here} here" for key, (there, here) in differ.items())
        print(f"--resume: {path} was measured with other settings ({found}): every preset is measured again",
              flush=True)
        return {}
    # A run a time limit cut short says nothing of the engine: measured again. Out of memory is a result.
    return {preset: {e: run[e] for e in ENGINES if e in run and not run[e].get("error", "").startswith("timed out")}
            for preset, run in earlier["runs"].items()}


def save(name: str, args, conditions: Conditions, runs: dict, earlier: dict, final: bool) -> dict:
    devices = {r[e]["device"] for r in runs.values() for e in ENGINES if r.get(e, {}).get("ok")}
    result = {
        "device": ", ".join(sorted(devices)) or "none ran",
        **(conditions.end() if final else conditions.so_far()),
        **settings(args), "runs": runs,
        "not_yet_run": [f"{p} {e}" for p in args.presets for e in ENGINES if e not in runs.get(p, {})],
        "kept_from_an_earlier_run": [f"{p} {e}" for p in runs for e in ENGINES if e in earlier.get(p, {})],
        "largest_preset": {e: next((p for p in reversed(list(runs)) if runs[p].get(e, {}).get("ok")), None)
                           for e in ENGINES},
        "goal": f"ratio (stream / the best DeepSpeed offload) >= {GOAL_RATIO} on a GPU; stream MFU >= "
                f"{GOAL_MFU_27B:.0%} at 2.7b",
    }
    record(name, result, markdown(result))
    return result


def cell(run: dict, key: str, fmt: str) -> str:
    return format(run[key], fmt) if run["ok"] and run.get(key) is not None else "–"


def markdown(r: dict) -> str:
    lines = [
        "# Layer streaming (`engine: stream`) against DeepSpeed's CPU offload (ZeRO-3, ZeRO-2), one device", "",
        f"{ran_on(r)} Device: {r['device']}; device-memory cap: {r['device_memory_cap_gb'] or 'none'} GB.", "",
        f"Rows of {r['seq_len']} tokens, {r['vocab_size']:,}-token BPE, micro-batch {r['micro_batch']}, global batch "
        f"{r['global_batch']} ({r['global_batch'] * r['seq_len']:,} tokens a step); {r['measured_steps']} steps timed "
        f"after {r['warmup_steps']}. All through `solo.train.loop.train_worker`, AdamW, the `loop:` switches at auto, "
        "OMP_WAIT_POLICY=passive; *zero3*: ZeRO-3, optimizer and parameters offloaded to CPU; *zero2*: ZeRO-2, "
        "optimizer offloaded to CPU"
        + ("; both with activation checkpointing" if r.get("baseline_activation_checkpointing") else "") + ".", "",
        "| preset | engine | tokens/s | stream ÷ it | MFU | device peak GB | host peak GB | loop |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for preset, run in r["runs"].items():
        for engine in ENGINES:
            e = run.get(engine, {"ok": False, "error": "not run"})
            ratio = run.get(f"ratio_vs_{engine}")
            lines.append(f"| {preset} | {engine} | {cell(e, 'tokens_per_s', ',.0f') if e['ok'] else e['error']} | "
                         f"{'**' + str(ratio) + '×**' if ratio else '–'} | {cell(e, 'mfu', '.1%')} | "
                         f"{cell(e, 'gpu_peak_gb', '.2f')} | {cell(e, 'host_peak_gb', '.2f')} | "
                         f"{e.get('switches') or '–'} |")
    lines += [""] + [f"- {preset}: stream ÷ the best DeepSpeed offload ({run['best_offload']}) = **{run['ratio']}×**"
                     for preset, run in r["runs"].items() if "ratio" in run]
    if r.get("kept_from_an_earlier_run"):
        lines += ["", f"Kept from an earlier run with the same settings (`--resume`): "
                      f"{', '.join(r['kept_from_an_earlier_run'])}."]
    if r.get("not_yet_run"):
        lines += ["", f"Still to run when this was written: {', '.join(r['not_yet_run'])}."]
    largest = ", ".join(f"{e} {r['largest_preset'][e]}" for e in ENGINES)
    lines += ["", f"Largest preset that trained: {largest}. Goals on a GPU: stream ≥ {GOAL_RATIO}× the best "
              f"DeepSpeed offload; stream MFU ≥ {GOAL_MFU_27B:.0%} at 2.7b.", ""]
    if r["device"] == "cpu":
        lines += ["On a CPU every engine's \"device\" is host memory and nothing is streamed over a bus: these "
                  "figures only show that the benchmark runs end to end, not the engine's speed; with a load "
                  "average above the core count, other work was running too.", ""]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
