"""Time to quality on text no recipe was tuned on: WikiText-2, 4 minutes on the CPU. solo's defaults against
solo with today's former recipe (AdamW + cosine) and against nanoGPT's CPU recipe, each given the same seconds.

    .venv/bin/python -m benchmarks.wikitext2_vs_nanogpt [--minutes 4] [--config configs/pretrain/default.yaml]

All three train on WikiText-2's `test.txt` (1.3 MB) and are scored on the whole of its `valid.txt` (1.1 MB), as
bits per byte (summed negative log-likelihood in bits over UTF-8 bytes: the same scale whatever the
tokenizer). The data is the tokenized variant (`<unk>`, spaced punctuation) from ../shared/data/wikitext2.

- solo's defaults: the pretrain config given (the shipped default), a BPE of the tokenizer stage's default
  size and rows of the tokenize stage's default length, `max_minutes` set to the budget.
- solo, AdamW + cosine: the same, with `optim.name=adamw optim.schedule=cosine` and the learning rate,
  warmup and floor the defaults had before issue 26 (3e-3, 10 steps, 0.1).
- nanoGPT's CPU recipe (benchmarks.time_to_quality), its iterations set so its run, evaluations included,
  fills the budget (timed on a short probe first).

Each solo run is timed whole: Ray Train's start, DeepSpeed's set-up, evaluations and the export. Goal (issue
26): solo's defaults at most 0.90× the recipe's bits per byte, and clearly below AdamW + cosine.
Writes benchmarks/results/wikitext2_vs_nanogpt.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from benchmarks.record import DATA, Conditions, ran_on, record
from benchmarks.time_to_quality import (
    CharCodec,
    budget_minutes,
    build_tokens,
    peer_iters_for,
    peer_nats,
    run_peer,
    run_solo,
    solo_scores,
)
from solo.config import default_config_path, load_config
from solo.runtime import start_private_ray, worker_env
from solo.tokens.config import TokenizeConfig, TokenizerConfig
from solo.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TRAIN, VALID = DATA / "wikitext2" / "test.txt", DATA / "wikitext2" / "valid.txt"
# The recipe solo's defaults had before issue 26.
FORMER_RECIPE = ["optim.name=adamw", "optim.schedule=cosine", "optim.lr=3e-3", "optim.warmup_steps=10",
                 "optim.min_lr_ratio=0.1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="each side's wall-clock budget")
    parser.add_argument("--config", type=Path, default=default_config_path("pretrain"),
                        help="solo's pretrain config (default: the shipped default)")
    args = parser.parse_args()

    train_text, val_text = TRAIN.read_text(), VALID.read_text()
    val_bytes = len(val_text.encode())
    seconds = args.minutes * 60
    conditions = Conditions()

    codec = CharCodec(train_text, val_text)
    train_ids, val_ids = codec.encode(train_text), codec.encode(val_text)
    iters = peer_iters_for(seconds, train_ids, val_ids, len(codec.chars))
    print(f"peer: {iters} iterations fill {seconds:.0f} s", flush=True)
    peer = run_peer(train_ids, val_ids, len(codec.chars), iters)
    peer_bpb = peer_nats(peer["model"], val_ids) / math.log(2) / val_bytes
    print(f"peer: {peer['seconds']:.1f} s, val {peer_bpb:.4f} bits/byte", flush=True)

    vocab_size = load_config(TokenizerConfig, default_config_path("tokenizer")).vocab_size
    seq_len = load_config(TokenizeConfig, default_config_path("tokenize")).seq_len
    budget = f"max_minutes={budget_minutes(seconds):.4f}"
    arms = {"solo defaults": load_config(TrainConfig, args.config, ["device=cpu", budget]),
            "solo AdamW + cosine": load_config(TrainConfig, args.config, ["device=cpu", budget, *FORMER_RECIPE])}
    sides = {}
    with tempfile.TemporaryDirectory(prefix="solo-wikitext2-") as tmp:
        folder = Path(tmp)
        tokens = build_tokens(folder, train_text, val_text, vocab_size, seq_len)
        start_private_ray(2, worker_env())
        try:
            runs = {name: run_solo(config, folder, f"arm{i}", tokens["val_bytes_per_token"])
                    for i, (name, config) in enumerate(arms.items())}
        finally:
            import ray

            ray.shutdown()
        for name, run in runs.items():
            config, last = arms[name], run["rows"][-1]
            sides[name] = {"optimizer": config.optim.name, "schedule": config.optim.schedule,
                           "lr": config.optim.lr, "muon_lr": config.optim.muon_lr if config.optim.name == "muon"
                           else None, "model": config.model, "workers": config.workers,
                           "global_batch": config.global_batch, "seq_len": seq_len, "steps": int(last["step"]),
                           "seconds": round(run["seconds"], 1), "lr_at_end": float(last["lr"]),
                           **solo_scores(run["output"], val_text, seq_len)}
    sides["nanoGPT CPU recipe"] = {"optimizer": "adamw", "schedule": "cosine", "model": "char GPT 4×4×128",
                                   "steps": iters, "seconds": round(peer["seconds"], 1),
                                   "parameters": peer["parameters"], "val_bpb": round(peer_bpb, 4)}

    defaults, former = sides["solo defaults"]["val_bpb"], sides["solo AdamW + cosine"]["val_bpb"]
    result = {**conditions.end(), "minutes": args.minutes, "train_bytes": len(train_text.encode()),
              "val_bytes": val_bytes, "config": str(args.config.relative_to(REPO))
              if args.config.is_relative_to(REPO) else str(args.config),
              "tokenizer_vocab": vocab_size, "sides": sides,
              "defaults_over_peer_bpb": round(defaults / peer_bpb, 4),
              "defaults_over_adamw_cosine_bpb": round(defaults / former, 4),
              "adamw_cosine_over_peer_bpb": round(former / peer_bpb, 4),
              "goal": "solo defaults <= 0.90 x the nanoGPT recipe, and below AdamW + cosine (issue 26)"}
    result["goal_met"] = result["defaults_over_peer_bpb"] <= 0.90 and defaults < former
    print(markdown(result))
    record("wikitext2_vs_nanogpt", result, markdown(result))


def markdown(r: dict) -> str:
    lines = [f"# Time to quality on WikiText-2: {r['minutes']:g} minutes on the CPU", "", ran_on(r), "",
             f"Trained on WikiText-2's test.txt ({r['train_bytes']:,} bytes), scored on the whole of valid.txt "
             f"({r['val_bytes']:,} bytes) as bits per byte. solo: `{r['config']}`, a {r['tokenizer_vocab']:,}-token "
             "BPE trained on the training text, each run timed whole (Ray Train's start, DeepSpeed's set-up, "
             "evaluations, export).", "",
             "| side | optimizer + schedule | parameters | steps | seconds | val bits per byte |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, s in r["sides"].items():
        lines.append(f"| {name} | {s['optimizer']} + {s['schedule']} | {s['parameters'] / 1e6:.2f}M | "
                     f"{s['steps']:,} | {s['seconds']} | {s['val_bpb']} |")
    lines += ["", f"- solo's defaults ÷ nanoGPT recipe: **{r['defaults_over_peer_bpb']}** (goal ≤ 0.90)",
              f"- solo's defaults ÷ solo AdamW + cosine: **{r['defaults_over_adamw_cosine_bpb']}** (goal < 1)",
              f"- solo AdamW + cosine ÷ nanoGPT recipe: {r['adamw_cosine_over_peer_bpb']}",
              f"- goal {'met' if r['goal_met'] else 'not met'}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
