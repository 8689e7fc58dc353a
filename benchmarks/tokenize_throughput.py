"""Encoding throughput of the tokenize stage (Ray Data) on 1 and 2 cores, against one process.

    .venv/bin/python -m benchmarks.tokenize_throughput [--copies 2]

The same prepared parquet (real web text, WikiText-2 articles and Python's docs, `--copies` times
over with fresh ids) is encoded and packed into shards three ways: a single-process loop of
`tokenizers`' `encode_batch` (which spreads each batch over every core with its own threads) and
`solo.tokens.shards.pack`, then `solo.tokens.shards.tokenize` on a private Ray with `num_cpus=1` and
`num_cpus=2`. Goal: the stage scales with cores. The machine's load average is recorded beside each
run: on a shared machine, other work takes cores from it.
Writes benchmarks/results/tokenize_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from benchmarks.record import Conditions, ran_on, record
from benchmarks.tokenizer_train import real_documents
from solo.tokens import tokenizer as tok
from solo.tokens import train_bpe as bpe
from solo.tokens.config import TokenizeConfig
from solo.tokens.shards import is_validation, pack, token_dtype
from solo.tokens.tokenize import tokenize

SETTINGS = TokenizeConfig()


def write_parquet(folder: Path, copies: int, rows_per_file: int = 20_000) -> int:
    """The corpus as the data stage writes it: shards of 20,000 documents, so one file here."""
    documents = list(real_documents())
    rows = [{"id": f"{doc_id}-{c}", "text": text} for c in range(copies) for doc_id, text, _ in documents]
    folder.mkdir(parents=True)
    for i in range(0, len(rows), rows_per_file):
        pq.write_table(pa.Table.from_pylist(rows[i:i + rows_per_file]),
                       folder / f"part_{i // rows_per_file:03d}.parquet")
    return sum(len(r["text"].encode()) for r in rows)


def single_process(data_dir: Path, tokenizer, output: Path) -> int:
    """The peer: a plain loop in one process, `tokenizers`' own parallel `encode_batch` (Rust threads
    on every core) over batches of 512 documents, packed and saved as the stage packs and saves."""
    dtype = token_dtype(len(tokenizer))
    streams: dict[str, list] = {"train": [], "val": []}
    tokens = 0
    for batch in pads.dataset(str(data_dir), format="parquet").to_batches(columns=["id", "text"], batch_size=512):
        ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        for doc_id, encoding in zip(ids, tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)):
            streams["val" if is_validation(doc_id, SETTINGS.val_fraction) else "train"].append(encoding.ids)
            tokens += len(encoding.ids) + 1
    for split, documents in streams.items():
        rows, _ = pack(documents, tokenizer.eos_token_id, SETTINGS.seq_len, dtype)
        (output / split).mkdir(parents=True)
        for start in range(0, len(rows), SETTINGS.rows_per_shard):
            np.save(output / split / f"shard_{start // SETTINGS.rows_per_shard:05d}.npy",
                    rows[start:start + SETTINGS.rows_per_shard])
    return tokens


def with_ray(num_cpus: int, data_dir: Path, tokenizer, output: Path) -> list[tuple[int, float]]:
    """Tokens and seconds of `tokenize` on a private Ray of `num_cpus` (its start-up not timed),
    twice: the first run starts Ray's worker processes (each imports tokenizers and numpy), the
    second finds them warm, as every batch but the first does on a corpus of real size."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    try:
        timings = []
        for attempt in ("first", "warm"):
            started = time.perf_counter()
            metrics = tokenize(data_dir, tokenizer, output / attempt, SETTINGS.seq_len, SETTINGS.val_fraction,
                               SETTINGS.rows_per_shard, progress=lambda _: None)
            timings.append((metrics["tokens"], time.perf_counter() - started))
        return timings
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()
    conditions = Conditions()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = write_parquet(work / "data", args.copies)
        sample = [text for _, text, _ in real_documents()][:400]
        bpe.train_bpe(sample, vocab_size=4096, min_frequency=2).save_pretrained(str(work / "tok"))
        tokenizer = tok.load(work / "tok")
        print(f"{size / 1e6:.1f} MB of text")

        load = os.getloadavg()[0]
        started = time.perf_counter()
        tokens = single_process(work / "data", tokenizer, work / "single")
        runs = {"single_process": {"tokens": tokens, "seconds": time.perf_counter() - started, "load_before": load}}
        for cores in (1, 2):
            load = os.getloadavg()[0]
            (tokens, first), (_, warm) = with_ray(cores, work / "data", tokenizer, work / f"ray{cores}")
            runs[f"ray_{cores}_cores_first"] = {"tokens": tokens, "seconds": first, "load_before": load}
            runs[f"ray_{cores}_cores"] = {"tokens": tokens, "seconds": warm, "load_before": load}
    for run in runs.values():
        run["tokens_per_s"] = round(run["tokens"] / run["seconds"])
        run["mb_per_s"] = round(size / 1e6 / run["seconds"], 3)
        run["seconds"] = round(run["seconds"], 3)
    assert len({r["tokens"] for r in runs.values()}) == 1, "every side must encode the same tokens"
    base = runs["single_process"]["tokens_per_s"]
    result = {
        **conditions.end(),
        "bytes": size, "copies": args.copies, "vocab_size": len(tokenizer), "runs": runs,
        "ray_2_over_1_cores": round(runs["ray_2_cores"]["tokens_per_s"] / runs["ray_1_cores"]["tokens_per_s"], 3),
        "ray_2_cores_over_single_process": round(runs["ray_2_cores"]["tokens_per_s"] / base, 3),
        "ray_1_core_over_single_process": round(runs["ray_1_cores"]["tokens_per_s"] / base, 3),
        "ray_2_over_1_cores_first_run": round(runs["ray_2_cores_first"]["tokens_per_s"]
                                              / runs["ray_1_cores_first"]["tokens_per_s"], 3),
        "goal": "scales with cores",
    }
    record("tokenize_throughput", result, markdown(result))
    print(f"Ray 2 cores / 1 core {result['ray_2_over_1_cores']}; Ray 2 cores / single process "
          f"{result['ray_2_cores_over_single_process']}")


def markdown(r: dict) -> str:
    lines = [
        "# Tokenize stage throughput: Ray Data on 1 and 2 cores against one process", "",
        ran_on(r), "",
        f"{r['bytes'] / 1e6:.1f} MB of real text (web, WikiText-2, Python's docs; {r['copies']} copies) encoded with "
        f"a {r['vocab_size']:,}-token BPE and packed into {SETTINGS.seq_len}-token rows. *single process* is "
        "`tokenizers`' multi-threaded `encode_batch` + `solo.tokens.shards.pack` in a loop, no Ray; the Ray runs are "
        "`solo.tokens.shards.tokenize` on a private `ray.init(num_cpus=N)` (one single-threaded encoding task per "
        "core, each packing and writing its own shards), its start-up not timed, run twice: *first* includes starting "
        "Ray's worker processes, the plain row finds them warm (as all but the first batches of a real corpus do). "
        "All encode the same tokens.", "",
        "| run | seconds | tokens/s | MB/s | vs single process | load average before |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = r["runs"]["single_process"]["tokens_per_s"]
    for name, run in r["runs"].items():
        lines.append(f"| {name.replace('_', ' ')} | {run['seconds']:.2f} | {run['tokens_per_s']:,} | "
                     f"{run['mb_per_s']:.2f} | {run['tokens_per_s'] / base:.2f}× | {run['load_before']:.1f} |")
    lines += ["", f"Ray on 2 cores over 1 core: **{r['ray_2_over_1_cores']}×** with warm workers, "
                  f"{r['ray_2_over_1_cores_first_run']}× counting their start (goal: scales with cores)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
