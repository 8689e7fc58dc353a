"""MinHash-LSH near-dedup over the whole corpus, with every candidate pair verified before merging.

    signatures (Ray Data workers)  text → shingle hashes → MinHash (bands × rows) → one key per band
                                   (and per half band when `probe_half_bands`)
    candidates (driver, keys only) documents whose key matches in some band or half band
    verify     (driver, bounded)   similarity of the two documents' shingles ≥ threshold
    clusters   (driver)            union-find over the verified pairs; survivor = the smallest id

MinHash-LSH alone links any two documents whose signatures collide in one band and, through
union-find, everything linked to them: pages sharing a long template (header, menu, footer)
collide and whole sites collapse into one cluster. Checking each candidate pair exactly removes
those false links before they are merged.

Because every candidate is checked, extra candidates cost verification time, never precision:
probing each 8-row band by its two 4-row halves too makes a pair at Jaccard 0.6 a candidate with
probability 0.98 instead of 0.16 (the candidates of 28 × 4 banding over the same MinHash values).

The check (`similarity`): `shared_words`, the share of the two documents' words that lie inside a
5-word shingle the other document also has. An edit of a span of k words costs k words there, but
k + 4 shingles in Jaccard, so a copy with 10-12% of its words edited in short spans scores about 0.9,
where its Jaccard falls to 0.6-0.7, the range of two pages sharing a template (which share 65-85% of their
words: the template's, never the body's). `jaccard` (the shingle sets' Jaccard) is the classic check.

Only keys travel to the driver: 8 bytes per band (or half band) and document, plus the shingle
counts; shingle sequences are read back from the staged parquet in chunks of `verify_memory_mb`,
never the texts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import xxhash

from solo.data.config import DedupConfig
from solo.data.ngrams import mix64, ngram_hashes, word_hashes, words

_PRIME = np.uint64((1 << 61) - 1)
_CHUNK = 2048  # shingles per step, so a 200 kB document never holds a 35,000 × 112 matrix
# A bucket this big (a boilerplate page repeated thousands of times) is paired as a star around its
# first member plus a chain; every pair of a smaller bucket is checked.
_ALL_PAIRS_UP_TO = 16


def permutations(config: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of `a·x + b mod 2^61-1` for each MinHash value: the same for a seed everywhere."""
    gen = np.random.RandomState(config.seed)
    count = config.bands * config.rows_per_band
    return (gen.randint(1, _PRIME, dtype=np.uint64, size=count), gen.randint(0, _PRIME, dtype=np.uint64, size=count))


def shingle_sequence(text: str, words_per_shingle: int) -> np.ndarray:
    """The hash of the shingle starting at each word, in text order (repeats kept: `shared_words`
    needs the positions); a text shorter than one shingle is one shingle of all its words."""
    tokens = words(text, numbers_to_zero=True)
    if 0 < len(tokens) < words_per_shingle:
        return np.array([xxhash.xxh64_intdigest(" ".join(tokens).encode())], dtype=np.uint64)
    return ngram_hashes(word_hashes(tokens), words_per_shingle)


def shingles(text: str, words_per_shingle: int) -> np.ndarray:
    """The sorted distinct shingle hashes."""
    return np.unique(shingle_sequence(text, words_per_shingle))


def minhash(shingle_set: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min over shingles of (a·x + b, wrapped to 64 bits as datatrove does) mod 2^61-1, per permutation."""
    signature = np.full(a.shape, np.iinfo(np.uint64).max, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(shingle_set), _CHUNK):
            values = shingle_set[start:start + _CHUNK, None] * a + b
            # x mod 2^61-1 without a division (4× faster than %): fold the top 3 bits onto the rest.
            values = (values & _PRIME) + (values >> np.uint64(61))
            values = np.where(values >= _PRIME, values - _PRIME, values)
            np.minimum(signature, values.min(axis=0), out=signature)
    return signature


def band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per band: equal keys ⇔ (almost surely) equal bands."""
    with np.errstate(over="ignore"):
        folded = signature.reshape(bands, rows) * (np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(2) + 1)
        return mix64(folded.sum(axis=1, dtype=np.uint64))


def probing_halves(config: DedupConfig) -> bool:
    return config.probe_half_bands and config.rows_per_band > 1


def lsh_keys(signature: np.ndarray, config: DedupConfig) -> np.ndarray:
    """The keys a document is bucketed by: one per band, or, when probing, one per half band (a band
    matches only if both its halves do, so the halves' candidates include the bands')."""
    bands, rows = config.bands, config.rows_per_band
    if not probing_halves(config):
        return band_keys(signature, bands, rows)
    by_band = signature.reshape(bands, rows)
    half = rows // 2
    return np.stack([band_keys(by_band[:, :half].ravel(), bands, half),
                     band_keys(by_band[:, half:].ravel(), bands, rows - half)], axis=1).ravel()


def key_columns(config: DedupConfig) -> int:
    return config.bands * (2 if probing_halves(config) else 1)


SIGNATURE_COLUMNS = ["bands", "n_shingles", "shingles"]


class Signer:
    """Adds `bands` (uint64 LSH keys as bytes), `n_shingles` and `shingles` (the shingle sequence,
    uint64 as bytes) to a batch of `{id, text, reason}`; a row already dropped, or with no words,
    gets empty ones."""

    def __init__(self, config: DedupConfig):
        self.config = config
        self.a, self.b = permutations(config)

    def __call__(self, batch: dict) -> dict:
        bands, counts, sets = [], [], []
        for text, reason in zip(batch["text"], batch["reason"]):
            sequence = shingle_sequence(text, self.config.shingle_words) if not reason else np.empty(0, np.uint64)
            # A repeated shingle does not change a minimum: the sequence signs as its set would.
            keys = lsh_keys(minhash(sequence, self.a, self.b), self.config) if sequence.size else np.empty(0, np.uint64)
            # Bytes, not a 2-D array: Ray would store that as its tensor extension type.
            bands.append(keys.tobytes())
            counts.append(sequence.size)
            sets.append(sequence.tobytes())
        return {**batch, "bands": np.array(bands, dtype=object), "n_shingles": np.array(counts, dtype=np.int64),
                "shingles": np.array(sets, dtype=object)}


def sign(batch: dict, config: DedupConfig) -> dict:
    """The Ray Data step (a task, no actor: the permutations take microseconds to draw)."""
    return Signer(config)(batch)


@dataclass
class NearDuplicates:
    duplicate_of: dict[str, str]   # a dropped document's id → its cluster's survivor
    candidate_pairs: int
    verified_pairs: int
    clusters: int

    def stats(self) -> dict:
        return {"near_duplicates": len(self.duplicate_of), "candidate_pairs": self.candidate_pairs,
                "verified_pairs": self.verified_pairs, "near_clusters": self.clusters}


def candidate_pairs(bands: np.ndarray) -> np.ndarray:
    """Pairs (i < j) of rows whose keys match in at least one band, as an [n, 2] int64 array.

    Rows are expected in id order, so a bucket's first member is its smallest id."""
    pairs = []
    for band in range(bands.shape[1]):
        order = np.argsort(bands[:, band], kind="stable")
        keys = bands[order, band]
        same = np.flatnonzero(keys[1:] == keys[:-1]) + 1  # positions that continue a run
        if same.size == 0:
            continue
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        run_start = starts[np.searchsorted(starts, same, side="right") - 1]
        pairs.append(np.stack([order[same - 1], order[same]], axis=1))      # chain
        pairs.append(np.stack([order[run_start], order[same]], axis=1))     # star around the first
        run_size = np.diff(np.r_[starts, len(keys)])
        for start, size in zip(starts[(run_size > 2) & (run_size <= _ALL_PAIRS_UP_TO)],
                               run_size[(run_size > 2) & (run_size <= _ALL_PAIRS_UP_TO)]):
            members = order[start:start + size]
            i, j = np.triu_indices(size, k=1)
            pairs.append(np.stack([members[i], members[j]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    found = np.concatenate(pairs).astype(np.int64)
    found = np.sort(found, axis=1)
    found = found[found[:, 0] != found[:, 1]]
    return np.unique(found, axis=0)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Of two sorted distinct shingle sets."""
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


def shared_words(a: np.ndarray, b: np.ndarray, words_per_shingle: int) -> float:
    """The share of the two documents' words that lie inside a shingle the other one has too, from
    their shingle sequences (a document of n shingles has n + words_per_shingle - 1 words)."""
    covered = _covered_words(np.isin(a, b), words_per_shingle) + _covered_words(np.isin(b, a), words_per_shingle)
    return covered / (a.size + b.size + 2 * (words_per_shingle - 1))


def _covered_words(shared: np.ndarray, words_per_shingle: int) -> int:
    """Words inside at least one shared shingle: word w is in shingles w-n+1 … w."""
    count = shared.size + words_per_shingle - 1
    running = np.concatenate([[0], np.cumsum(shared)])
    word = np.arange(count)
    last = np.minimum(word + 1, shared.size)
    first = np.maximum(word - words_per_shingle + 1, 0)
    return int(np.count_nonzero(running[last] > running[first]))


def similarity(config: DedupConfig) -> Callable[[np.ndarray, np.ndarray], float]:
    """The verification measure the config names, over two shingle sequences."""
    if config.similarity == "jaccard":
        return lambda a, b: jaccard(np.unique(a), np.unique(b))
    return lambda a, b: shared_words(a, b, config.shingle_words)


def verify(pairs: np.ndarray, sizes: np.ndarray, threshold: float, memory_bytes: int,
           load: Callable[[set[int]], dict[int, np.ndarray]],
           measure: Callable[[np.ndarray, np.ndarray], float]) -> np.ndarray:
    """The candidate pairs whose similarity (`measure` of their shingle sequences) reaches `threshold`.

    Pairs are taken in chunks whose documents' shingles fit `memory_bytes`; `load(rows)` reads
    those sequences (from the staged parquet) for one chunk."""
    kept = []
    start = 0
    while start < len(pairs):
        rows: set[int] = set()
        used = 0
        end = start
        while end < len(pairs) and (end == start or used <= memory_bytes):
            for row in pairs[end]:
                if row not in rows:
                    rows.add(int(row))
                    used += 8 * int(sizes[row])
            end += 1
        sets = load(rows)
        for i, j in pairs[start:end]:
            if measure(sets[i], sets[j]) >= threshold:
                kept.append((i, j))
        start = end
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


def clusters(count: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over the verified pairs: each row's root is the smallest row of its cluster."""
    parent = np.arange(count)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(count)])


def find_near_duplicates(ids: list[str], bands: np.ndarray, sizes: np.ndarray, config: DedupConfig,
                         load: Callable[[set[int]], dict[int, np.ndarray]]) -> NearDuplicates:
    """`ids` sorted; `bands`/`sizes` in the same order; `load(rows)` gives shingle sequences by row."""
    pairs = candidate_pairs(bands)
    verified = verify(pairs, sizes, config.similarity_threshold(), config.verify_memory_mb << 20, load,
                      similarity(config))
    roots = clusters(len(ids), verified)
    dropped = np.flatnonzero(roots != np.arange(len(ids)))
    return NearDuplicates({ids[r]: ids[roots[r]] for r in dropped}, len(pairs), len(verified),
                          int(np.unique(roots[dropped]).size))


def find_in_signatures(folder: Path, config: DedupConfig, skip: set[str] = frozenset()) -> NearDuplicates:
    """Near duplicates among the signed rows of a parquet folder (written through `sign`), but `skip`."""
    dataset = pads.dataset(str(folder), format="parquet")
    keys = dataset.to_table(columns=["id", "bands", "n_shingles"], filter=pads.field("n_shingles") > 0)
    raw_ids = keys.column("id").to_pylist()
    order = sorted((i for i, id_ in enumerate(raw_ids) if id_ not in skip), key=raw_ids.__getitem__)
    ids = [raw_ids[i] for i in order]
    bands = bands_matrix(keys.column("bands").to_pylist(), key_columns(config))[order]
    sizes = keys.column("n_shingles").to_numpy()[order]
    row_of = {id_: row for row, id_ in enumerate(ids)}
    del keys, raw_ids

    def load(rows: set[int]) -> dict[int, np.ndarray]:
        wanted = {ids[r] for r in rows}
        sets = {}
        for batch in dataset.to_batches(columns=["id", "shingles"], filter=pads.field("n_shingles") > 0,
                                        batch_size=4096):
            for id_, blob in zip(batch.column("id").to_pylist(), batch.column("shingles").to_pylist()):
                if id_ in wanted:
                    sets[row_of[id_]] = np.frombuffer(blob, dtype=np.uint64)
        return sets

    return find_near_duplicates(ids, bands, sizes, config, load)


def bands_matrix(blobs: list[bytes], columns: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype=np.uint64).reshape(-1, columns)


def near_duplicates_in_memory(documents: Iterable[tuple[str, str]], config: DedupConfig) -> NearDuplicates:
    """The same decisions for documents in memory: for tests and small corpora, no Ray."""
    docs = sorted(documents)
    batch = sign({"id": [d[0] for d in docs], "text": [d[1] for d in docs], "reason": [""] * len(docs)}, config)
    rows = np.flatnonzero(batch["n_shingles"] > 0)
    sets = [np.frombuffer(batch["shingles"][r], dtype=np.uint64) for r in rows]
    keys = bands_matrix(list(batch["bands"][rows]), key_columns(config))
    return find_near_duplicates([docs[r][0] for r in rows], keys, batch["n_shingles"][rows], config,
                                lambda wanted: {r: sets[r] for r in wanted})


def mark_near(batch: dict, duplicate_of: dict[str, str]) -> dict:
    reasons, survivors = list(batch["reason"]), list(batch["duplicate_of"])
    for i, id_ in enumerate(batch["id"]):
        survivor = duplicate_of.get(id_)
        if survivor is not None and not reasons[i]:
            reasons[i], survivors[i] = "dup_near", survivor
    return {**batch, "reason": reasons, "duplicate_of": survivors}
