"""Muon + WSD against AdamW + cosine on one GPU: the 125m preset on web text for the same fixed minutes,
scored as validation bits per byte (issue 26).

GPU (one card, bf16; each arm in a process of its own, one after the other):
    .venv/bin/python -m benchmarks.gpu_muon_vs_adamw --minutes 5
    .venv/bin/python -m benchmarks.gpu_muon_vs_adamw --minutes 4 --arms muon --resume   # one arm per call
CPU dry run (the demo preset, a few seconds an arm: checks the benchmark runs end to end):
    .venv/bin/python -m benchmarks.gpu_muon_vs_adamw --dry-run

The text: every web-text file in ../shared/data/webtext (Dolma, C4 and FineWeb documents), one document in
twenty held out by a hash of its position; a byte-level BPE trained on the rest; rows of `--seq-len` tokens.
Both arms run solo's own loop (`solo.train.loop.train_worker` on a one-rank process group, no Ray: the way it
runs under the `deepspeed` launcher) with `max_minutes`, ZeRO-0 bf16 and nothing offloaded; they differ only
in `optim` (muon: Muon at `optim.muon_lr` for the hidden matrices, AdamW for the rest, WSD; adamw: AdamW
with cosine, the recipe before issue 26). The exported models are scored on the held-out documents.
Writes benchmarks/results/gpu_muon_vs_adamw.{json,md} (`_cpu` from a dry run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from benchmarks.record import DATA, RESULTS, Conditions, ran_on, record

ARMS = {"muon": ["optim.name=muon", "optim.schedule=wsd"],
        "adamw": ["optim.name=adamw", "optim.schedule=cosine", "optim.lr=3e-3", "optim.warmup_steps=10"]}


def documents() -> list[str]:
    texts = []
    for path in sorted((DATA / "webtext").iterdir()):
        if path.suffix == ".json":
            texts += [d["text"] for d in json.loads(path.read_text())]
        elif path.name.endswith((".jsonl", ".jsonl.gz")):
            import gzip

            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as f:
                texts += [json.loads(line)["text"] for line in f if line.strip()]
    return [t for t in texts if t and t.strip()]


def one_arm(arm: str, args, work: Path) -> dict:
    """In a child process: train one arm for the budget, return its last metrics and its output folder."""
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
    join_one_process_group(cuda)
    config = load_config(TrainConfig, None, [
        f"model={args.preset}", "workers=1", f"device={'cuda' if cuda else 'cpu'}", "max_steps=null",
        f"max_minutes={args.minutes}", f"micro_batch={args.micro_batch}", f"global_batch={args.global_batch}",
        "log_every=10", "eval_every=100", f"checkpoint_every={10**6}", "strategy.zero_stage=0",
        f"strategy.precision={'bf16' if cuda else 'fp32'}", *ARMS[arm]])
    output = work / arm
    output.mkdir()
    tokens = json.loads((work / "tokens.json").read_text())
    metrics = train_worker(TrainJob(config=config, train_dir=str(work / "tokens" / "train"),
                                    val_dir=str(work / "tokens" / "val"), tokenizer_dir=str(work / "tokenizer"),
                                    output_dir=str(output), val_bytes_per_token=tokens["val_bytes_per_token"]),
                           CheckpointSink())
    return {**metrics, "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="each arm's wall-clock budget")
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--global-batch", type=int, default=64, help="sequences per optimizer step")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--resume", action="store_true", help="keep the arms the results file already holds")
    parser.add_argument("--dry-run", action="store_true",
                        help="on the CPU: the demo preset, 0.15 minutes an arm, a 1,024-token BPE, rows of 128")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.minutes, args.preset, args.seq_len, args.vocab_size = 0.15, "demo", 128, 1024
        args.micro_batch, args.global_batch = 8, 16
    if args.one:
        print("RESULT " + json.dumps(one_arm(args.one, args, Path(args.work))), flush=True)
        return

    import torch

    from benchmarks.time_to_quality import build_tokens, solo_scores

    name = "gpu_muon_vs_adamw" if torch.cuda.is_available() else "gpu_muon_vs_adamw_cpu"
    earlier = json.loads((RESULTS / f"{name}.json").read_text())["arms"] if args.resume and \
        (RESULTS / f"{name}.json").is_file() else {}
    texts = documents()
    held_out = [t for i, t in enumerate(texts) if zlib.crc32(str(i).encode()) % 20 == 0]
    train = [t for i, t in enumerate(texts) if zlib.crc32(str(i).encode()) % 20 != 0]
    conditions = Conditions()
    arms = dict(earlier)
    with tempfile.TemporaryDirectory(prefix="solo-muon-vs-adamw-") as tmp:
        work = Path(tmp)
        tokens = build_tokens(work, "\n\n".join(train), "\n\n".join(held_out), args.vocab_size, args.seq_len)
        (work / "tokens.json").write_text(json.dumps(tokens))
        for arm in args.arms:
            command = [sys.executable, "-m", "benchmarks.gpu_muon_vs_adamw", "--one", arm, "--work", str(work),
                       "--minutes", str(args.minutes), "--preset", args.preset, "--seq-len", str(args.seq_len),
                       "--micro-batch", str(args.micro_batch), "--global-batch", str(args.global_batch),
                       *(["--dry-run"] if args.dry_run else [])]
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{arm} failed (exit {done.returncode}):\n" + (done.stdout + done.stderr)[-4000:])
            metrics = json.loads(line[len("RESULT "):])
            arms[arm] = {"optim": ARMS[arm], "steps": metrics["step"], "loss": metrics["loss"],
                         "tokens_per_s": metrics["tokens_per_s"], "mfu": metrics.get("mfu"),
                         "device": metrics["device"],
                         **solo_scores(work / arm, "\n\n".join(held_out), args.seq_len)}
            print(arm, json.dumps(arms[arm]), flush=True)
    result = {**conditions.end(), "device": ", ".join(sorted({a["device"] for a in arms.values()})),
              "preset": args.preset, "minutes": args.minutes, "seq_len": args.seq_len, "vocab_size": args.vocab_size,
              "global_batch": args.global_batch, "tokens_per_step": args.global_batch * args.seq_len,
              "train_bytes": sum(len(t.encode()) for t in train), "val_bytes": sum(len(t.encode()) for t in held_out),
              "arms": arms}
    if {"muon", "adamw"} <= arms.keys():
        result["muon_over_adamw_bpb"] = round(arms["muon"]["val_bpb"] / arms["adamw"]["val_bpb"], 4)
    record(name, result, markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [f"# Muon + WSD against AdamW + cosine: {r['preset']} on web text, {r['minutes']:g} minutes each", "",
             f"{ran_on(r)} Device: {r['device']}.", "",
             f"Rows of {r['seq_len']} tokens, {r['tokens_per_step']:,} tokens a step, a {r['vocab_size']:,}-token BPE; "
             f"{r['train_bytes']:,} bytes of web text to train on, {r['val_bytes']:,} held out.", "",
             "| arm | optimizer settings | steps | tokens/s | MFU | val bits per byte |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for arm, a in r["arms"].items():
        mfu = f"{a['mfu']:.1%}" if a.get("mfu") else "–"
        lines.append(f"| {arm} | `{' '.join(a['optim'])}` | {a['steps']:,} | {a['tokens_per_s']:,.0f} | {mfu} | "
                     f"{a['val_bpb']} |")
    if "muon_over_adamw_bpb" in r:
        lines += ["", f"Muon ÷ AdamW bits per byte: **{r['muon_over_adamw_bpb']}**."]
    if r["device"] == "cpu":
        lines += ["", "A CPU dry run: the figures show the benchmark runs end to end, not what a GPU measures."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
