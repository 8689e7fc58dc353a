"""CPU serving throughput: the batching engine at 1, 4, 16 and 64 concurrent clients, and what the
HTTP gateway (Ray Serve + the OpenAI layer, driven by the official client) costs on top.

    .venv/bin/python -m benchmarks.serve_cpu                  # random `demo`, `125m` and `350m` Llamas, built here
    .venv/bin/python -m benchmarks.serve_cpu --model PATH     # any exported HF folder
    .venv/bin/python -m benchmarks.serve_cpu --presets demo,125m --repeats 2   # with llama.cpp's row, as recorded

Beside solo, under the same load: llama.cpp, as llama-cpp-python's OpenAI server running the model exported
by `solo export --format gguf --quant q8_0` (pip install 'llama-cpp-python[server]'; `--llama-cpp-levels ""`
leaves it out), with as many threads as solo's engine. The ratio printed is solo's served tokens/s over
llama.cpp's, and the other way round for time to first token.

Every request is the same chat prompt decoded greedily, so the engine and the served app produce
the same tokens and their numbers compare like with like. The engine gets `--threads` cores, as a
Serve replica with `num_cpus` of that many would. Served, it also records the CPU time each request
cost each process on its way (proxy, gateway, model replica, engine, client): what the overhead is
made of. Results go to benchmarks/results/serve_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.record import Conditions, record
from benchmarks.serving_load import QUESTION, at_level, build_model, drive, load_levels, parameter_count_of
from solo.errors import SoloError
from solo.export.gguf import write_gguf
from solo.runtime import free_port


def bench_engine(model: Path, levels: list[int], max_tokens: int, threads: int, rounds: int) -> list[dict]:
    from solo.serving.cpu_engine import CpuEngine
    from solo.serving.engine import SamplingParams
    from solo.tokens.tokenizer import load, render_chat, stop_token_ids

    tokenizer = load(model)
    prompt_ids = render_chat(tokenizer, QUESTION, add_generation_prompt=True)[0]
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop_token_ids=tuple(stop_token_ids(tokenizer)))
    engine = CpuEngine(model, max_concurrent=max(levels), threads=threads)

    async def one_request():
        start, ttft, n = time.perf_counter(), None, 0
        async for delta in engine.generate(prompt_ids, params):
            ttft = ttft or time.perf_counter() - start
            n += len(delta.token_ids)
        return ttft, n

    async def run_all():
        await drive(1, 1, one_request)  # warm-up
        return [await drive(c, rounds, one_request) for c in levels]

    return asyncio.run(run_all())


# The processes a served request passes through, by the start of their command line.
SERVING_ROLES = {"proxy": "ray::ProxyActor", "gateway": "ray::ServeReplica:solo:Gateway",
                 "model replica": "ray::ServeReplica:solo:LLMServer"}


def serving_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each process a served request passes through: Ray Serve's proxy,
    the gateway, the model's replica, its engine process, and this one, the client."""
    import psutil

    used = {role: 0.0 for role in [*SERVING_ROLES, "engine", "client"]}
    for process in psutil.process_iter(["cmdline", "cpu_times"]):
        command = process.info["cmdline"] or [""]
        role = next((r for r, prefix in SERVING_ROLES.items() if command[0].startswith(prefix)), None)
        if role is None and "solo.serving.engine_child" in command:
            role = "engine"
        if process.pid == os.getpid():
            role = "client"
        if role is not None and process.info["cpu_times"] is not None:
            used[role] += process.info["cpu_times"].user + process.info["cpu_times"].system
    return used


def bench_served(model: Path, levels: list[int], max_tokens: int, threads: int, rounds: int,
                 stream_interval: int) -> list[dict]:
    from solo.serving.config import ServeConfig
    from solo.serving.run import serving

    config = ServeConfig(model=str(model), name="bench", port=free_port(), max_concurrent=max(levels),
                         replica_cpus=threads, max_queue=4 * max(levels), rate_limit_rpm=0,
                         stream_interval=stream_interval)
    with serving(config) as url:
        return load_levels(url, "bench", levels, max_tokens, rounds, cpu_seconds=serving_cpu_seconds)


def llama_cpp_server(gguf: Path, threads: int, port: int) -> subprocess.Popen:
    """llama-cpp-python's OpenAI server on `gguf`, answering as model `bench` on 127.0.0.1:`port` once ready.
    Its log goes to a file beside the GGUF: a pipe nobody reads would fill with its loader's lines and stop it."""
    log = gguf.with_suffix(".log")
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench", "--host",
             "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
             "--n_ctx", "2048"], stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SoloError(f"llama.cpp's server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SoloError(f"llama.cpp's server did not answer within 120 s: {log.read_text()[-2000:]}")


def bench_llama_cpp(gguf: Path, levels: list[int], max_tokens: int, threads: int, rounds: int) -> list[dict]:
    port = free_port()
    server = llama_cpp_server(gguf, threads, port)
    try:
        return load_levels(f"http://127.0.0.1:{port}/v1", "bench", levels, max_tokens, rounds)
    finally:
        server.terminate()
        server.wait(timeout=60)


def measure(model: Path, label: str, args: argparse.Namespace, gguf: Path | None = None) -> dict:
    """The engine alone, then the served app, `--repeats` times in turn: this machine's speed drifts
    by ±10% over minutes, more than the overhead sought, so each served figure is set against the
    engine's measured minutes before it, and the overhead is taken between medians. Ray and the app
    are stopped while the engine runs alone. The first repetition measures the engine at every
    level; later ones at the levels the served app is measured at."""
    levels = [int(x) for x in args.levels.split(",")]
    gateway_levels = [int(x) for x in args.gateway_levels.split(",") if x]
    llama_cpp_levels = [int(x) for x in args.llama_cpp_levels.split(",") if x]
    repeats = []
    for repeat in range(args.repeats if gateway_levels or gguf else 1):
        engine = bench_engine(model, levels if repeat == 0 else gateway_levels, args.max_tokens, args.threads,
                              args.rounds)
        served = (bench_served(model, gateway_levels, args.max_tokens, args.threads, args.rounds,
                               args.stream_interval) if gateway_levels else [])
        llama_cpp = (bench_llama_cpp(gguf, llama_cpp_levels, args.max_tokens, args.threads, args.rounds)
                     if gguf else [])
        repeats.append({"engine": engine, "served": served, "llama_cpp": llama_cpp})
        print(f"{label}, repetition {repeat + 1}/{args.repeats}: " + "; ".join(
            f"{path} " + ", ".join(f"{r['concurrency']} clients {r['tokens_per_s']} tok/s" for r in results)
            for path, results in repeats[-1].items() if results), flush=True)

    def median_tokens_per_s(path: str, concurrency: int) -> float:
        return statistics.median(r["tokens_per_s"] for r in at_level(repeats, path, concurrency))

    engine = repeats[0]["engine"]
    by_level = {r["concurrency"]: r["tokens_per_s"] for r in engine}
    speedup = {c: round(by_level[c] / by_level[levels[0]], 2) for c in levels}
    overhead = {c: round(1 - median_tokens_per_s("served", c) / median_tokens_per_s("engine", c), 3)
                for c in gateway_levels if c in levels}
    def median_ttft(path: str, concurrency: int) -> float:
        return statistics.median(r["ttft_p50_ms"] for r in at_level(repeats, path, concurrency))

    # solo over HTTP against llama.cpp over HTTP, at the levels both were measured at.
    versus = {c: {"tokens_per_s_ratio": round(median_tokens_per_s("served", c) / median_tokens_per_s("llama_cpp", c),
                                              2),
                  "ttft_p50_ratio": round(median_ttft("llama_cpp", c) / median_ttft("served", c), 2)}
              for c in llama_cpp_levels if gguf and c in gateway_levels}
    return {"model": label, "engine": engine, "repeats": repeats, "speedup_vs_1_client": speedup,
            "median_tokens_per_s": {path: {c: median_tokens_per_s(path, c) for c in gateway_levels}
                                    for path in ("engine", "served")} if gateway_levels else {},
            "gateway_overhead_tokens_per_s": overhead, "solo_vs_llama_cpp": versus}


def table(run: dict) -> list[str]:
    lines = [f"## {run['model']}", "",
             "| path | clients | requests | output tok/s | × one client | TTFT p50 ms | TTFT p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in run["engine"]:
        lines.append(f"| engine | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']} | "
                     f"{run['speedup_vs_1_client'][r['concurrency']]} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} |")
    for r in run["repeats"][0]["served"]:
        lines.append(f"| HTTP (Ray Serve) | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']} | | "
                     f"{r['ttft_p50_ms']} | {r['ttft_p99_ms']} |")
    for r in run["repeats"][0]["llama_cpp"]:
        lines.append(f"| llama.cpp (q8_0 GGUF, llama-cpp-python server) | {r['concurrency']} | {r['requests']} | "
                     f"{r['tokens_per_s']} | | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} |")
    if run["solo_vs_llama_cpp"]:
        lines += ["", "solo served against llama.cpp, medians over the repetitions (above 1: solo is better):", "",
                  "| clients | output tok/s, solo ÷ llama.cpp | TTFT p50, llama.cpp ÷ solo |", "|---:|---:|---:|"]
        lines += [f"| {c} | {v['tokens_per_s_ratio']} | {v['ttft_p50_ratio']} |"
                  for c, v in run["solo_vs_llama_cpp"].items()]
    if not run["gateway_overhead_tokens_per_s"]:
        return lines + [""]
    lines += ["", "Output tokens/s in each repetition (engine alone, then served), and the overhead between medians:",
              "", "| clients | engine alone | served over HTTP | overhead (1 − served ÷ engine) |",
              "|---:|---|---|---:|"]
    for c, o in run["gateway_overhead_tokens_per_s"].items():
        by_path = {path: [r["tokens_per_s"] for r in at_level(run["repeats"], path, c)]
                   for path in ("engine", "served")}
        medians = run["median_tokens_per_s"]
        lines.append(f"| {c} | {', '.join(map(str, by_path['engine']))} (median {medians['engine'][c]}) | "
                     f"{', '.join(map(str, by_path['served']))} (median {medians['served'][c]}) | {100 * o:.1f}% |")
    roles = list(run["repeats"][0]["served"][0]["cpu_ms_per_request"])
    lines += ["", "CPU milliseconds each served request cost each process (median over the repetitions): the "
              "engine's is the model's work, the others' the serving path's and the client's:", "",
              "| clients | " + " | ".join(roles) + " |", "|---:|" + "---:|" * len(roles)]
    for c in run["gateway_overhead_tokens_per_s"]:
        costs = [r["cpu_ms_per_request"] for r in at_level(run["repeats"], "served", c)]
        lines.append(f"| {c} | " + " | ".join(str(statistics.median(cost[role] for cost in costs)) for role in roles)
                     + " |")
    return lines + [""]


def main() -> None:
    from solo.serving.config import ServeConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported HF folder; default: random Llamas built here")
    parser.add_argument("--presets", default="demo,125m,350m",
                        help="model sizes to build when no --model is given (solo.train.presets.PRESETS)")
    parser.add_argument("--levels", default="1,4,16,64", help="concurrent clients")
    parser.add_argument("--gateway-levels", default="1,16", help="levels at which to measure the served app")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends back to back")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, like a replica's num_cpus")
    parser.add_argument("--repeats", type=int, default=3,
                        help="times the engine alone and the served app are measured in turn")
    parser.add_argument("--llama-cpp-levels", default="1,16",
                        help="levels at which to measure llama.cpp's server on the q8_0 GGUF export (\"\": none)")
    parser.add_argument("--stream-interval", type=int, default=ServeConfig().stream_interval,
                        help="tokens per streamed message after the first (ServeConfig.stream_interval)")
    args = parser.parse_args()

    if args.llama_cpp_levels:
        try:
            import llama_cpp.server  # noqa: F401  (only to know it is there before minutes of work)
        except ImportError as missing:
            parser.error(f"llama.cpp's row needs pip install 'llama-cpp-python[server]' ({missing}); "
                         "or pass --llama-cpp-levels ''")

    def gguf_of(model: Path, folder: Path) -> Path | None:
        return write_gguf(model, folder / "model-q8_0.gguf", "q8_0").path if args.llama_cpp_levels else None

    conditions = Conditions()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            runs.append(measure(args.model, str(args.model), args, gguf_of(args.model, Path(tmp))))
        for preset in [] if args.model else args.presets.split(","):
            model = build_model(Path(tmp) / preset, preset)
            runs.append(measure(model, f"random {preset} ({parameter_count_of(model) / 1e6:.1f}M parameters)", args,
                                gguf_of(model, Path(tmp))))
    report = {**conditions.end(), "max_tokens": args.max_tokens, "threads": args.threads, "rounds": args.rounds,
              "repeats": args.repeats,
              "stream_interval": args.stream_interval, "runs": runs}

    lines = [f"# CPU serving: {args.max_tokens} tokens a request, {args.threads} engine thread(s), "
             f"stream_interval {args.stream_interval}", "", conditions.sentence(), ""]
    for run in runs:
        lines += table(run)
    lines += ["Served, the engine runs in a process of its own (solo/serving/engine_process.py) and Ray Serve in "
              "its throughput mode (solo.runtime.worker_env). The serving path costs CPU per request and per "
              "streamed message (Ray Serve's proxy, the gateway, the model's replica relaying the engine's tokens; "
              "and the client parsing SSE), on the same cores as the engine: its share of the throughput is small "
              "where a request's engine work is large, and most of it where that work is a few milliseconds."]
    if args.llama_cpp_levels:
        lines += ["", "llama.cpp's rows: llama-cpp-python's OpenAI server on the q8_0 GGUF that `solo export --format "
                  f"gguf --quant q8_0` writes, with {args.threads} thread(s) as solo's engine, the same requests."]
    record("serve_cpu", report, "\n".join(lines))
    print("\n".join(lines))
    for run in runs:
        for clients, versus in run["solo_vs_llama_cpp"].items():
            print(f"{run['model']}, {clients} clients: solo {versus['tokens_per_s_ratio']}x llama.cpp's output "
                  f"tokens/s; llama.cpp's time to first token {versus['ttft_p50_ratio']}x solo's")
        if 16 in run["speedup_vs_1_client"]:
            print(f"{run['model']}: 16 clients / 1 client tokens/s {run['speedup_vs_1_client'][16]}x (goal >= 4x), "
                  f"gateway overhead {run['gateway_overhead_tokens_per_s']} (goal <= 0.10)")


if __name__ == "__main__":
    main()
