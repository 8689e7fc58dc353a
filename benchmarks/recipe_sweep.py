"""Why the default recipe is what it is: solo on tinyshakespeare for a fixed wall-clock budget, the default
recipe against variants that each change one thing back (or further), scored as bits per byte.

    .venv/bin/python -m benchmarks.recipe_sweep [--minutes 2] [--variants default adamw-cosine ...]
    .venv/bin/python -m benchmarks.recipe_sweep --minutes 0.3 --variants default adamw-cosine   # a quick look

Each variant trains `configs/pretrain/shakespeare-cpu.yaml` (the demo preset, two CPU workers, ZeRO-0) with its
overrides, for `--minutes` of `max_minutes`, on the same text split and scoring as benchmarks.shakespeare_vs_nanogpt
(the first 90% of the characters to train on, the whole last 10% scored). One run per variant, one after another:
a difference below about 0.02 bits per byte is within run-to-run noise (throughput varies a few percent, and with
it the steps a budget holds). Writes benchmarks/results/recipe_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.record import DATA, Conditions, ran_on, record
from benchmarks.time_to_quality import build_tokens, run_solo, solo_scores
from solo.config import default_config_path, load_config
from solo.runtime import start_private_ray, worker_env
from solo.train.config import TrainConfig

CONFIG = default_config_path("pretrain", "shakespeare-cpu")
# name → (what it changes, its overrides, its BPE vocabulary)
VARIANTS: dict[str, tuple[str, list[str], int]] = {
    "default": ("the default recipe: Muon (lr 0.04) + AdamW (lr 0.02) for the rest, WSD, warmup 20", [], 2048),
    "adamw-cosine": ("the recipe before: AdamW lr 3e-3 for every weight, cosine, warmup 10",
                     ["optim.name=adamw", "optim.schedule=cosine", "optim.lr=3e-3", "optim.warmup_steps=10"], 2048),
    "muon-cosine": ("cosine instead of WSD", ["optim.schedule=cosine"], 2048),
    "adam-lr-3e-3": ("AdamW's part at 3e-3 instead of 2e-2", ["optim.lr=3e-3"], 2048),
    "muon-lr-0.02": ("Muon at 0.02 instead of 0.04", ["optim.muon_lr=0.02"], 2048),
    "decay-0.5": ("WSD's decay over the last half instead of 30%", ["optim.decay_fraction=0.5"], 2048),
    "batch-32": ("32 sequences a step instead of 16", ["global_batch=32", "micro_batch=16"], 2048),
    "vocab-1024": ("a 1,024-token BPE instead of 2,048", [], 1024),
    "vocab-4096": ("a 4,096-token BPE instead of 2,048", [], 4096),
}
SEQ_LEN = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="each variant's max_minutes")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()

    text = (DATA / "tinyshakespeare" / "input.txt").read_text()
    split = int(len(text) * 0.9)
    train_text, val_text = text[:split], text[split:]
    conditions = Conditions()
    rows, built = {}, {}
    with tempfile.TemporaryDirectory(prefix="solo-recipe-sweep-") as tmp:
        start_private_ray(2, worker_env())
        try:
            for name in args.variants:
                what, overrides, vocab = VARIANTS[name]
                folder = Path(tmp) / f"bpe-{vocab}"
                if vocab not in built:
                    folder.mkdir()
                    built[vocab] = build_tokens(folder, train_text, val_text, vocab, SEQ_LEN)
                config = load_config(TrainConfig, CONFIG, [f"max_minutes={args.minutes}", *overrides])
                run = run_solo(config, folder, name, built[vocab]["val_bytes_per_token"])
                last = run["rows"][-1]
                rows[name] = {"changes": what, "overrides": overrides, "vocab_size": vocab,
                              "steps": int(last["step"]), "tokens_per_s": float(last["tokens_per_s"]),
                              "seconds": round(run["seconds"], 1), **solo_scores(run["output"], val_text, SEQ_LEN)}
                print(name, rows[name], flush=True)
        finally:
            import ray

            ray.shutdown()
    result = {**conditions.end(), "config": str(CONFIG.relative_to(CONFIG.parents[2])), "minutes": args.minutes,
              "seq_len": SEQ_LEN, "variants": rows}
    record("recipe_sweep", result, markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [f"# The default recipe and its variants: tinyshakespeare, {r['minutes']:g} CPU minutes each", "",
             ran_on(r), "",
             f"`{r['config']}` with each variant's overrides, `max_minutes` {r['minutes']:g}, rows of {r['seq_len']} "
             "tokens; scored on the whole held-out 10% as bits per byte (lower is better). One run each: differences "
             "under about 0.02 are noise.", "",
             "| variant | what it changes | steps | tokens/s | val bits per byte |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {v['changes']} | {v['steps']:,} | {v['tokens_per_s']:,.0f} | {v['val_bpb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
