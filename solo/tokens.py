"""Token shards: documents encoded, EOS between them, packed into fixed-length rows.

    tokens/{train,val}/index.json         seq_len, dtype, shards with their row counts
    tokens/{train,val}/shard_00000.npy    uint16 (uint32 when the vocabulary needs it) [rows, seq_len]
    tokens/{train,val}/shard_00000.labels.npy   optional int32 [rows, seq_len]: -100 where no loss

Train and validation are split by document (a hash of its id), never inside one. The
loader gives each of N workers a disjoint, deterministic slice of every global batch, and its
position is a pair of integers that goes into the training checkpoint; it resumes at the next
unseen row on the same or a different number of workers (what holds: `ShardLoader`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

IGNORE = -100  # label of a token that carries no loss (Hugging Face's convention)


def is_validation(doc_id: str, fraction: float) -> bool:
    bucket = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


class ShardWriter:
    """Writes rows into numbered shards and an index; the index is written last, on close."""

    def __init__(self, folder: Path, seq_len: int, dtype: np.dtype, rows_per_shard: int, with_labels: bool = False):
        self.folder, self.seq_len, self.dtype = folder, seq_len, dtype
        self.rows_per_shard, self.with_labels = rows_per_shard, with_labels
        self.rows: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.shards: list[dict] = []
        self.documents = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.rows.append(row)
        if self.with_labels:
            self.labels.append(labels)
        if len(self.rows) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        name = f"shard_{len(self.shards):05d}"
        np.save(self.folder / f"{name}.npy", np.stack(self.rows).astype(self.dtype))
        if self.with_labels:
            np.save(self.folder / f"{name}.labels.npy", np.stack(self.labels).astype(np.int32))
        self.shards.append({"name": name, "rows": len(self.rows)})
        self.rows, self.labels = [], []

    def close(self) -> dict:
        self._flush()
        index = {"seq_len": self.seq_len, "dtype": self.dtype.name, "labels": self.with_labels,
                 "documents": self.documents, "rows": sum(s["rows"] for s in self.shards), "shards": self.shards}
        (self.folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        return index


class Packer:
    """Concatenates documents (each followed by EOS) and cuts the stream into rows of seq_len."""

    def __init__(self, writer: ShardWriter, eos_id: int):
        self.writer, self.eos_id = writer, eos_id
        self.buffer: list[int] = []

    def add_document(self, ids: Iterable[int]) -> None:
        self.buffer.extend(ids)
        self.buffer.append(self.eos_id)
        self.writer.documents += 1
        seq_len = self.writer.seq_len
        while len(self.buffer) >= seq_len:
            self.writer.add(np.asarray(self.buffer[:seq_len]))
            del self.buffer[:seq_len]

    def close(self) -> dict:
        # The tail shorter than a row is dropped: padding it would teach the model padding.
        return self.writer.close()


def encode_batch(batch: dict, tokenizer, val_fraction: float) -> dict:
    ids = tokenizer(list(batch["text"]), add_special_tokens=False)["input_ids"]
    return {"id": batch["id"], "ids": ids, "bytes": [len(t.encode()) for t in batch["text"]],
            "val": [is_validation(i, val_fraction) for i in batch["id"]]}


def tokenize(data_dir: Path, tokenizer, output: Path, seq_len: int, val_fraction: float, rows_per_shard: int,
             progress=print) -> dict:
    """Encode `data_dir` (the data stage's parquet) with Ray Data and pack it into shards."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    started = time.time()
    dtype = token_dtype(len(tokenizer))
    packers = {split: Packer(ShardWriter(output / split, seq_len, dtype, rows_per_shard), tokenizer.eos_token_id)
               for split in ("train", "val")}
    ds = ray.data.read_parquet(str(data_dir)).select_columns(["id", "text"])
    ds = ds.map_batches(encode_batch, fn_kwargs={"tokenizer": tokenizer, "val_fraction": val_fraction}, batch_size=256)
    tokens = 0
    val_bytes = val_tokens = 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=256):
        for ids, size, val in zip(batch["ids"], batch["bytes"], batch["val"]):
            packers["val" if val else "train"].add_document(ids)
            tokens += len(ids) + 1
            if val:
                val_bytes, val_tokens = val_bytes + int(size), val_tokens + len(ids) + 1
    indexes = {split: packer.close() for split, packer in packers.items()}
    seconds = time.time() - started
    progress(f"tokenize: {tokens:,} tokens → {indexes['train']['rows']:,} train and "
             f"{indexes['val']['rows']:,} val rows of {seq_len} ({tokens / seconds:,.0f} tokens/s)")
    if indexes["train"]["rows"] == 0:
        from solo.errors import SoloError

        raise SoloError(f"too little text for one training row of {seq_len} tokens: add data or lower tokenize.seq_len")
    return {"tokens": tokens, "train_rows": indexes["train"]["rows"], "val_rows": indexes["val"]["rows"],
            "tokens_per_s": round(tokens / seconds),
            "bytes_per_token": round(val_bytes / val_tokens, 4) if val_tokens else 0.0}


class TokenShards:
    """Read-only view of one split's shards, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self.seq_len = self.index["seq_len"]
        self._tokens = [np.load(self.folder / f"{s['name']}.npy", mmap_mode="r") for s in self.index["shards"]]
        self._labels = ([np.load(self.folder / f"{s['name']}.labels.npy", mmap_mode="r") for s in self.index["shards"]]
                        if self.index["labels"] else None)
        self._starts = np.cumsum([0] + [s["rows"] for s in self.index["shards"]])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) as int64 arrays [len(indices), seq_len]."""
        tokens, labels = [], []
        for i in indices:
            shard = int(np.searchsorted(self._starts, i, side="right") - 1)
            local = int(i - self._starts[shard])
            row = np.asarray(self._tokens[shard][local], dtype=np.int64)
            tokens.append(row)
            labels.append(np.asarray(self._labels[shard][local], dtype=np.int64) if self._labels else row)
        return np.stack(tokens), np.stack(labels)


@dataclass
class LoaderState:
    epoch: int = 0
    position: int = 0  # rows of this epoch's permutation already consumed, across all workers


class ShardLoader:
    """Each global micro-batch is `workers × micro_batch` consecutive rows of a per-epoch permutation;
    worker `rank` takes its own `micro_batch` of them. All workers hold the same state, so a
    checkpoint from any rank resumes every rank.

    The permutation depends on (seed, epoch) alone, and `position` counts rows of it consumed by
    all workers together, so a state saved with W workers × m rows resumes with W' × m' (either
    may change) and what holds is exact: with N rows and G' = W' × m',
      - the first global micro-batch after resuming is rows position … position + G' − 1 of the
        permutation: the next unseen ones; no row seen before the checkpoint comes again this epoch;
      - the rest of the epoch is rows position … position + k·G' − 1, k = ⌊(N − position) / G'⌋,
        split among the W' workers without overlap; the last (N − position) mod G' rows are not
        seen this epoch (as every epoch's tail shorter than a global micro-batch is not);
      - from the next epoch on, the order is exactly that of a run started with W' × m'.
    With the same W and m, resuming repeats the uninterrupted run exactly. The state must be
    taken between global micro-batches, i.e. after every rank has taken its share."""

    def __init__(self, shards: TokenShards, rank: int, workers: int, micro_batch: int, seed: int,
                 state: LoaderState | None = None):
        self.shards, self.rank, self.workers, self.micro_batch, self.seed = shards, rank, workers, micro_batch, seed
        self.state = state or LoaderState()
        self.global_micro = workers * micro_batch
        if len(shards) < self.global_micro:
            from solo.errors import SoloError

            raise SoloError(f"{len(shards)} training rows cannot fill one step of {workers} workers × "
                            f"micro_batch {micro_batch}: add data or lower the batch")

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self._order(self.state.epoch)
        while True:
            if self.state.position + self.global_micro > len(order):
                self.state = LoaderState(self.state.epoch + 1, 0)
                order = self._order(self.state.epoch)
            start = self.state.position + self.rank * self.micro_batch
            self.state.position += self.global_micro
            yield self.shards.rows(order[start:start + self.micro_batch])
