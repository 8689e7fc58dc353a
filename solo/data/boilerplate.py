"""Boilerplate lines: lines that repeat across many documents of one domain ("Jump to navigation",
"Share this:", cookie banners) are removed before the quality rules see the text.

Two passes, memory bounded whatever the corpus size: the first maps each document to the
64-bit keys of its distinct (domain, line) pairs and the document's own text hash, and Ray Data
counts, per line key, the distinct documents it appears in (an exact duplicate of a page does not
make its lines boilerplate); only the keys over the threshold come back to the driver, a set that
is small by nature. The second pass (inside `clean`) drops the lines whose key is in that set.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import ray

from solo.data.config import BoilerplateConfig


def line_key(domain: str, line: str) -> int:
    digest = hashlib.blake2b(f"{domain}\x1f{line}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _text_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little",
                          signed=True)


def line_keys(batch: pa.Table) -> pa.Table:
    """(line key, document key) once per distinct line of each document still in the running."""
    lines, docs = [], []
    for text, domain, reason in zip(batch.column("text").to_pylist(), batch.column("domain").to_pylist(),
                                    batch.column("reason").to_pylist()):
        if reason or not text:
            continue
        doc = _text_key(text)
        for line in {line for line in text.split("\n") if line.strip()}:
            lines.append(line_key(domain, line))
            docs.append(doc)
    return pa.table({"line": pa.array(lines, pa.int64()), "doc": pa.array(docs, pa.int64())})


def frequent_lines(normalized, c: BoilerplateConfig) -> frozenset[int]:
    """Keys of the lines found in at least `c.min_documents` distinct documents of their domain."""
    # Ray Data's default of 200 shuffle partitions costs more to schedule than a small corpus to count.
    partitions = max(2, int(ray.cluster_resources().get("CPU", 2)))
    pairs = normalized.select_columns(["text", "domain", "reason"]).map_batches(line_keys, batch_format="pyarrow")
    per_line = pairs.groupby(["line", "doc"], num_partitions=partitions).count() \
        .groupby("line", num_partitions=partitions).count()
    frequent: set[int] = set()
    for batch in per_line.iter_batches(batch_format="pyarrow", batch_size=65536):
        counts = batch.column("count()").to_numpy()
        frequent.update(batch.column("line").to_numpy()[counts >= c.min_documents].tolist())
    return frozenset(frequent)


def remove_lines(text: str, domain: str, frequent: frozenset[int]) -> tuple[str, int]:
    """The text without its boilerplate lines, and how many lines went."""
    kept, removed = [], 0
    for line in text.split("\n"):
        if line.strip() and line_key(domain, line) in frequent:
            removed += 1
        else:
            kept.append(line)
    return ("\n".join(kept).strip() if removed else text), removed
