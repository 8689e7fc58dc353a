"""The tokenize stage: the prepared documents encoded with Ray Data, EOS between them, packed into rows of
`seq_len` tokens, split into train and validation by document (solo.tokens.shards holds the layout)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.dataset
import ray.data

from solo.errors import SoloError
from solo.faults import fault_point
from solo.tokens.shards import ShardWriter, is_validation, pack, token_dtype, write_index


def _block_name(ids: Sequence[str]) -> str:
    """A name for a block's shards that a retried task gives again (so it overwrites, never adds)."""
    return hashlib.sha1("\x1f".join(ids).encode()).hexdigest()[:16]


def encode_and_pack(batch: dict, tokenizer, output: str, seq_len: int, val_fraction: float,
                    rows_per_shard: int) -> dict:
    """One Ray Data task: encode a batch of documents, pack each split's into rows, and write the
    full rows as shards under `output/<split>/`. What leaves the task is a row per split with the
    shard names and the tail shorter than a row, which the driver packs at the end: the driver
    touches no token but those tails, so the stage scales with the cores Ray gives it.

    The block's summary is committed last (`output/blocks/<block>.json`); a run killed and started again
    takes a committed block's summary instead of encoding it again."""
    ids, texts = [str(i) for i in batch["id"]], [str(t) for t in batch["text"]]
    dtype, block = token_dtype(len(tokenizer)), _block_name(ids)
    committed = Path(output) / "blocks" / f"{block}.json"
    if committed.is_file():
        summary = json.loads(committed.read_text())
        return {**summary, "tail": [base64.b64decode(tail) for tail in summary["tail"]]}
    # One core per task: Ray runs as many tasks as it has cores, and a tokenizer that spread
    # each task over every core as well would only make them fight.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # The Rust tokenizer itself: the Python wrapper would also build attention masks no one reads.
    encoded = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    out: dict[str, list] = {k: [] for k in ("split", "shards", "tail", "documents", "tokens", "bytes")}
    for split in ("train", "val"):
        members = [i for i, doc_id in enumerate(ids) if is_validation(doc_id, val_fraction) == (split == "val")]
        rows, tail = pack([encoded[i] for i in members], tokenizer.eos_token_id, seq_len, dtype)
        shards = []
        for part, start in enumerate(range(0, len(rows), rows_per_shard)):
            name = f"block_{block}_{part:03d}"
            np.save(Path(output) / split / f"{name}.npy", rows[start:start + rows_per_shard])
            shards.append({"name": name, "rows": len(rows[start:start + rows_per_shard])})
        out["split"].append(split)
        out["shards"].append(json.dumps(shards))
        out["tail"].append(tail.astype(np.uint32).tobytes())
        out["documents"].append(len(members))
        out["tokens"].append(len(rows) * seq_len + len(tail))
        out["bytes"].append(sum(len(texts[i].encode()) for i in members))
    committed.parent.mkdir(exist_ok=True)
    partial = committed.with_suffix(".tmp")
    partial.write_text(json.dumps({**out, "tail": [base64.b64encode(tail).decode() for tail in out["tail"]]}))
    os.replace(partial, committed)
    return out


def tokenize(data_dir: Path, tokenizer, output: Path, seq_len: int, val_fraction: float, rows_per_shard: int,
             progress=print, batch_size: int = 512) -> dict:
    """Encode `data_dir` (the data stage's parquet) with Ray Data, packed into shards under
    `output/{train,val}`: every task writes the full rows of its own documents (shards in document
    order, as Ray Data keeps it), and the tails of all tasks, in order, become the last shards."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    started = time.time()
    dtype = token_dtype(len(tokenizer))
    for split in ("train", "val"):
        (output / split).mkdir(parents=True, exist_ok=True)

    total_documents = pyarrow.dataset.dataset(str(data_dir), format="parquet").count_rows()  # footers only
    committed = len(list((output / "blocks").glob("*.json")))
    if committed:
        progress(f"tokenize: {committed} of {-(-total_documents // batch_size)} blocks committed by an earlier "
                 "attempt: not encoded again")
    ds = ray.data.read_parquet(str(data_dir)).select_columns(["id", "text"])
    # A parquet file is read by one task, and the data stage may write one big file: cut the stream
    # into batch-sized blocks so that each core gets its own share to encode.
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    ds = ds.map_batches(encode_and_pack, batch_size=batch_size, batch_format="numpy", fn_kwargs={
        "tokenizer": tokenizer, "output": str(output), "seq_len": seq_len, "val_fraction": val_fraction,
        "rows_per_shard": rows_per_shard})
    shards: dict[str, list[dict]] = {"train": [], "val": []}
    tails = {split: ShardWriter(output / split, seq_len, dtype, rows_per_shard, prefix="tail") for split in shards}
    buffers: dict[str, list[int]] = {"train": [], "val": []}
    totals = {split: {"documents": 0, "tokens": 0, "bytes": 0} for split in shards}
    last_report = started
    for received, part in enumerate(ds.iter_rows(), start=1):
        if received % 2 == 0:  # a block's two splits are in
            fault_point("tokenize.block")
        split = part["split"]
        shards[split] += json.loads(part["shards"])
        buffers[split].extend(np.frombuffer(part["tail"], dtype=np.uint32).tolist())
        while len(buffers[split]) >= seq_len:
            tails[split].add(np.asarray(buffers[split][:seq_len]))
            del buffers[split][:seq_len]
        for key in totals[split]:
            totals[split][key] += int(part[key])
        if time.time() - last_report > 10:
            last_report = time.time()
            done = totals["train"]["documents"] + totals["val"]["documents"]
            rate = done / (last_report - started)
            progress(f"tokenize: {done:,}/{total_documents:,} documents ({rate:,.0f}/s, "
                     f"ETA {(total_documents - done) / max(rate, 1e-9):.0f} s)")
    indexes = {}
    for split in shards:
        # The last tail shorter than a row is dropped: padding it would teach the model padding.
        tails[split].flush()
        indexes[split] = write_index(output / split, seq_len, dtype, shards[split] + tails[split].shards,
                                     totals[split]["documents"])
    shutil.rmtree(output / "blocks", ignore_errors=True)  # the blocks' resume markers: the index is written
    tokens = totals["train"]["tokens"] + totals["val"]["tokens"]
    seconds = time.time() - started
    progress(f"tokenize: {tokens:,} tokens → {indexes['train']['rows']:,} train and "
             f"{indexes['val']['rows']:,} val rows of {seq_len} ({tokens / seconds:,.0f} tokens/s)")
    if indexes["train"]["rows"] == 0:
        raise SoloError(f"too little text for one training row of {seq_len} tokens: add data or lower tokenize.seq_len")
    val = totals["val"]
    return {"tokens": tokens, "train_rows": indexes["train"]["rows"], "val_rows": indexes["val"]["rows"],
            "tokens_per_s": round(tokens / seconds),
            "bytes_per_token": round(val["bytes"] / val["tokens"], 4) if val["tokens"] else 0.0}
