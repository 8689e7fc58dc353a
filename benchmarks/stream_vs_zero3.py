"""Layer streaming (`engine: stream`) against DeepSpeed ZeRO-3 with CPU offload, on one device, same preset and batch.

    .venv/bin/python -m benchmarks.stream_vs_zero3 [--presets demo] [--seq-len 256] [--micro-batch 4]
        [--global-batch 16] [--warmup 4] [--steps 4] [--device-memory-gb 24] [--resume]
GPU (one card; bf16; the largest preset that trains under a 24 GB device-memory cap):
    .venv/bin/python -m benchmarks.stream_vs_zero3 --presets 125m 350m 1.3b 2.7b 7b --seq-len 1024 \\
        --micro-batch 8 --global-batch 32 --device-memory-gb 24

Both sides run solo's own loop (`solo.train.loop.train_worker`, one process, a one-rank process group) on
the same token rows (tinyshakespeare and WikiText-2 through solo's BPE and packing), the same preset,
batch, optimizer (AdamW) and schedule: *zero3* is `engine: deepspeed` at ZeRO-3 with the optimizer and the
parameters offloaded to CPU, *stream* is `engine: stream`. Each run is a process of
its own, so the peaks (host RSS, device memory) are its own; with a device-memory cap the process
may use only that much of the card (`torch.cuda.set_per_process_memory_fraction`), and a run that
runs out is recorded as such. tokens/s is the loop's own window over `--steps` steps after
`--warmup`; both with OMP_WAIT_POLICY=passive (see run_child). Ratio = stream ÷ zero3 tokens/s
(the issue's goal on a GPU: ≥ 1.5×). On a CPU both "devices" are host memory: the figures check
that the benchmark runs, not the engine's speed.
Writes benchmarks/results/stream_vs_zero3.{json,md} from a GPU, stream_vs_zero3_cpu.{json,md} from a CPU.
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

ENGINES = ("zero3", "stream")
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
    from solo.train.job import TrainJob
    from solo.train.loop import train_worker

    cuda = torch.cuda.is_available()
    if cuda and args.device_memory_gb:
        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.device_memory_gb / total))
    join_one_process_group(cuda)
    config = load_config(TrainConfig, None, [
        f"model={preset}", "workers=1", f"engine={'stream' if engine == 'stream' else 'deepspeed'}",
        f"micro_batch={args.micro_batch}", f"global_batch={args.global_batch}",
        f"max_steps={args.warmup + args.steps}", f"log_every={args.steps}", f"eval_every={10**6}",
        f"checkpoint_every={10**6}", f"strategy.precision={'bf16' if cuda else 'fp32'}", "optim.name=adamw",
        *(["strategy.zero_stage=3", "strategy.offload_optimizer=cpu", "strategy.offload_params=cpu"]
          if engine == "zero3" else [])])
    output = Path(tempfile.mkdtemp(prefix=f"solo-{engine}-{preset}-", dir=work))
    metrics = train_worker(TrainJob(config=config, train_dir=str(work / "train"), val_dir=None,
                                    tokenizer_dir=str(work / "tokenizer"), output_dir=str(output)), CheckpointSink())
    return {"tokens_per_s": metrics["tokens_per_s"], "loss": metrics["loss"], "mfu": metrics.get("mfu"),
            "gpu_peak_gb": metrics.get("gpu_peak_gb"), "host_peak_gb": metrics["host_peak_gb"],
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def run_child(args, engine: str, preset: str, work: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.stream_vs_zero3", "--one", engine, preset, "--work", str(work),
               "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch),
               "--global-batch", str(args.global_batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--device-memory-gb", str(args.device_memory_gb or 0)]
    # OpenMP threads that spin between parallel regions starve each other on an oversubscribed CPU, and the
    # stream engine's many per-layer regions suffered most (demo: 25–140 tokens/s with spinning against
    # 1,300 with sleeping waits at load ~15 on two cores; 2,200 either way on an idle machine): both
    # engines run with sleeping waits. No effect on GPU kernels.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
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
    parser.add_argument("--resume", action="store_true",
                        help="keep the presets the results file holds from a run with the same settings on the "
                             "same device (one a time limit cut short, say); run the rest")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "PRESET"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup % args.steps:
        parser.error("--warmup must be a multiple of --steps (the loop logs every --steps steps)")
    if args.one:
        print("RESULT " + json.dumps(one_run(args, *args.one, Path(args.work))), flush=True)
        return

    import torch

    cuda = torch.cuda.is_available()
    name, device = RESULT_NAMES["cuda" if cuda else "cpu"], torch.cuda.get_device_name() if cuda else "cpu"
    earlier = earlier_runs(name, device, args) if args.resume else {}
    conditions = Conditions()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="solo-stream-vs-zero3-") as tmp:
        work = build_shards(Path(tmp), args.seq_len, args.vocab_size)
        for preset in args.presets:
            if preset in earlier:
                print(f"{preset}: kept from {RESULTS_DIR / name}.json", flush=True)
                runs[preset] = earlier[preset]
                continue
            runs[preset] = {engine: run_child(args, engine, preset, work) for engine in ENGINES}
            zero3, stream = runs[preset]["zero3"], runs[preset]["stream"]
            if zero3["ok"] and stream["ok"]:
                runs[preset]["ratio"] = round(stream["tokens_per_s"] / zero3["tokens_per_s"], 3)
            print(preset, json.dumps(runs[preset]), flush=True)
            # Large presets take minutes each: what was measured is on disk before the next begins.
            save(name, args, conditions, runs, earlier, final=False)
    print(markdown(save(name, args, conditions, runs, earlier, final=True)))


def settings(args) -> dict:
    return {"seq_len": args.seq_len, "vocab_size": args.vocab_size, "micro_batch": args.micro_batch,
            "global_batch": args.global_batch, "warmup_steps": args.warmup, "measured_steps": args.steps,
            "device_memory_cap_gb": args.device_memory_gb or None}


def earlier_runs(name: str, device: str, args) -> dict[str, dict]:
    """The presets `name`'s results hold, when they were measured on this device with these settings."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    differ = {k: (earlier.get(k), v) for k, v in settings(args).items() if earlier.get(k) != v}
    if earlier["device"] != device:
        differ["device"] = (earlier["device"], device)
    if differ:
        found = ", ".join(f"{key}: {there} there, {here} here" for key, (there, here) in differ.items())
        sys.exit(f"--resume: {path} was measured with other settings ({found}); "
                 "run without --resume to measure every preset")
    return earlier["runs"]


def save(name: str, args, conditions: Conditions, runs: dict, earlier: dict, final: bool) -> dict:
    devices = {r[e]["device"] for r in runs.values() for e in ENGINES if r[e]["ok"]}
    result = {
        "device": ", ".join(sorted(devices)) or "none ran",
        **(conditions.end() if final else conditions.so_far()),
        **settings(args), "runs": runs,
        "not_yet_run": [p for p in args.presets if p not in runs],
        "kept_from_an_earlier_run": [p for p in runs if p in earlier],
        "largest_preset": {e: next((p for p in reversed(list(runs)) if runs[p][e]["ok"]), None) for e in ENGINES},
        "goal": "ratio >= 1.5 on a GPU",
    }
    record(name, result, markdown(result))
    return result


def cell(run: dict, key: str, fmt: str) -> str:
    return format(run[key], fmt) if run["ok"] and run.get(key) is not None else "–"


def markdown(r: dict) -> str:
    lines = [
        "# Layer streaming (`engine: stream`) against ZeRO-3 with CPU offload, one device", "",
        f"{ran_on(r)} Device: {r['device']}; device-memory cap: {r['device_memory_cap_gb'] or 'none'} GB.", "",
        f"Rows of {r['seq_len']} tokens, micro-batch {r['micro_batch']}, global batch {r['global_batch']}; "
        f"{r['measured_steps']} steps timed after {r['warmup_steps']}. Both through `solo.train.loop.train_worker`, "
        "with OMP_WAIT_POLICY=passive.", "",
        "| preset | zero3 tokens/s | stream tokens/s | stream ÷ zero3 | zero3 MFU | stream MFU | zero3 device peak GB "
        "| stream device peak GB | zero3 host peak GB | stream host peak GB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for preset, run in r["runs"].items():
        z, s = run["zero3"], run["stream"]
        ratio = f"**{run['ratio']}×**" if "ratio" in run else "–"
        lines.append(f"| {preset} | {cell(z, 'tokens_per_s', ',.0f') if z['ok'] else z['error']} | "
                     f"{cell(s, 'tokens_per_s', ',.0f') if s['ok'] else s['error']} | {ratio} | "
                     f"{cell(z, 'mfu', '.1%')} | {cell(s, 'mfu', '.1%')} | "
                     f"{cell(z, 'gpu_peak_gb', '.2f')} | {cell(s, 'gpu_peak_gb', '.2f')} | "
                     f"{cell(z, 'host_peak_gb', '.2f')} | {cell(s, 'host_peak_gb', '.2f')} |")
    if r.get("kept_from_an_earlier_run"):
        lines += ["", f"Kept from an earlier run with the same settings (`--resume`): "
                      f"{', '.join(r['kept_from_an_earlier_run'])}."]
    if r.get("not_yet_run"):
        lines += ["", f"Still to run when this was written: {', '.join(r['not_yet_run'])}."]
    lines += ["", f"Largest preset that trained: zero3 {r['largest_preset']['zero3']}, stream "
              f"{r['largest_preset']['stream']}. Goal on a GPU: stream ÷ zero3 ≥ 1.5×.", ""]
    if r["device"] == "cpu":
        lines += ["On a CPU both engines' \"device\" is host memory and nothing is streamed over a bus: these "
                  "figures only show that the benchmark runs end to end, not the engine's speed; with a load "
                  "average above the core count, other work was running too.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
