"""Token shards: documents encoded, EOS between them, packed into fixed-length rows.

    tokenize/{train,val}/index.json         seq_len, dtype, shards with their row counts
    tokenize/{train,val}/shard_00000.npy    uint16 (uint32 when the vocabulary needs it) [rows, seq_len]
    tokenize/{train,val}/shard_00000.labels.npy   optional int32 [rows, seq_len]: -100 where no loss
    tokenize/{train,val}/shard_00000.positions.npy   optional int32 [rows, seq_len]: position ids, 0 where
                                          each packed conversation starts (fine-tuning rows)

Train and validation are split by document (a hash of its id), never inside one. The
loader gives each of N workers a disjoint, deterministic slice of every global batch, and its
position is a pair of integers that goes into the training checkpoint; it resumes at the next
unseen row on the same or a different number of workers (what holds: `ShardLoader`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solo.errors import SoloError

IGNORE = -100  # label of a token that carries no loss (Hugging Face's convention)


def is_validation(doc_id: str, fraction: float) -> bool:
    bucket = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def write_index(folder: Path, seq_len: int, dtype: np.dtype, shards: list[dict], documents: int,
                labels: bool = False, positions: bool = False) -> dict:
    """The split's index, written last: a folder without one is not a split."""
    index = {"seq_len": seq_len, "dtype": np.dtype(dtype).name, "labels": labels, "positions": positions,
             "documents": documents, "rows": sum(s["rows"] for s in shards), "shards": shards}
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


class ShardWriter:
    """Writes rows into numbered shards and an index; the index is written last, on close."""

    def __init__(self, folder: Path, seq_len: int, dtype: np.dtype, rows_per_shard: int, with_labels: bool = False,
                 prefix: str = "shard", with_positions: bool = False):
        self.folder, self.seq_len, self.dtype, self.prefix = folder, seq_len, dtype, prefix
        self.rows_per_shard, self.with_labels, self.with_positions = rows_per_shard, with_labels, with_positions
        self.rows: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []
        self.shards: list[dict] = []
        self.documents = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: np.ndarray, labels: np.ndarray | None = None, positions: np.ndarray | None = None) -> None:
        self.rows.append(row)
        if self.with_labels:
            self.labels.append(labels)
        if self.with_positions:
            self.positions.append(positions)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"{self.prefix}_{len(self.shards):05d}"
        np.save(self.folder / f"{name}.npy", np.stack(self.rows).astype(self.dtype))
        if self.with_labels:
            np.save(self.folder / f"{name}.labels.npy", np.stack(self.labels).astype(np.int32))
        if self.with_positions:
            np.save(self.folder / f"{name}.positions.npy", np.stack(self.positions).astype(np.int32))
        self.shards.append({"name": name, "rows": len(self.rows)})
        self.rows, self.labels, self.positions = [], [], []

    def close(self) -> dict:
        self.flush()
        return write_index(self.folder, self.seq_len, self.dtype, self.shards, self.documents, self.with_labels,
                           self.with_positions)


def pack(documents: Sequence[Sequence[int]], eos_id: int, seq_len: int, dtype: np.dtype
         ) -> tuple[np.ndarray, np.ndarray]:
    """Documents, each followed by EOS, as one stream cut into rows of `seq_len`:
    (rows [n, seq_len], the tail shorter than a row)."""
    total = sum(len(d) for d in documents) + len(documents)
    stream = np.fromiter(itertools.chain.from_iterable(itertools.chain(d, (eos_id,)) for d in documents),
                         dtype=dtype, count=total)
    full = len(stream) // seq_len * seq_len
    return stream[:full].reshape(-1, seq_len), stream[full:]


class TokenShards:
    """Read-only view of one split's shards, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self.seq_len = self.index["seq_len"]
        self._tokens = [np.load(self.folder / f"{s['name']}.npy", mmap_mode="r") for s in self.index["shards"]]
        self._labels = ([np.load(self.folder / f"{s['name']}.labels.npy", mmap_mode="r") for s in self.index["shards"]]
                        if self.index["labels"] else None)
        self._positions = ([np.load(self.folder / f"{s['name']}.positions.npy", mmap_mode="r")
                            for s in self.index["shards"]] if self.index.get("positions") else None)
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

    def positions(self, indices: np.ndarray) -> np.ndarray | None:
        """Position ids [len(indices), seq_len] of packed rows; None where rows are plain token streams."""
        if self._positions is None:
            return None
        located = [(int(np.searchsorted(self._starts, i, side="right") - 1), i) for i in indices]
        return np.stack([np.asarray(self._positions[s][int(i - self._starts[s])], dtype=np.int64) for s, i in located])


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
            raise SoloError(f"{len(shards)} training rows cannot fill one step of {workers} workers × "
                            f"micro_batch {micro_batch}: add data or lower the batch")

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def indices(self) -> Iterator[np.ndarray]:
        """This worker's row numbers, one micro-batch at a time."""
        order = self._order(self.state.epoch)
        while True:
            if self.state.position + self.global_micro > len(order):
                self.state = LoaderState(self.state.epoch + 1, 0)
                order = self._order(self.state.epoch)
            start = self.state.position + self.rank * self.micro_batch
            self.state.position += self.global_micro
            yield order[start:start + self.micro_batch]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for indices in self.indices():
            yield self.shards.rows(indices)
