"""Corrupt input costs only itself: the data stage over good files beside damaged ones (a half-downloaded
.jsonl.gz, a parquet file cut short) and ids that two inputs share, on a real local Ray."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from solo.data.config import DataConfig, DedupConfig, FilterConfig, InputSpec
from solo.data.stage import prepare

pytestmark = pytest.mark.integration


def page(rng: random.Random) -> str:
    return " ".join(f"word{rng.randrange(10**6)}" for _ in range(80))


def test_damaged_files_cost_only_themselves_and_repeated_ids_are_renamed(ray_local, tmp_path):
    rng = random.Random(3)
    folder = tmp_path / "in"
    folder.mkdir()
    good = [{"id": f"n{i}", "text": page(rng)} for i in range(30)]
    (folder / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    # Another export that numbers its records from 0 too: ids n0..n9 again, with other texts.
    again = [{"id": f"n{i}", "text": page(rng)} for i in range(10)]
    (folder / "again.jsonl").write_text("".join(json.dumps(r) + "\n" for r in again))
    shard = [{"id": f"z{i}", "text": page(rng)} for i in range(2000)]
    compressed = gzip.compress("".join(json.dumps(r) + "\n" for r in shard).encode())
    (folder / "shard.jsonl.gz").write_bytes(compressed[:len(compressed) // 2])  # half-downloaded
    pq.write_table(pa.table({"id": ["p0", "p1"], "text": [page(rng), page(rng)]}), folder / "ok.parquet")
    whole = (folder / "ok.parquet").read_bytes()
    (folder / "cut.parquet").write_bytes(whole[:len(whole) // 2])  # its footer is gone

    config = DataConfig(inputs=[InputSpec(path=str(folder), domain="web", quality_filters=False)],
                        min_chars=10, dedup=DedupConfig(near=False),
                        filters=FilterConfig(boilerplate={"enabled": False}, pii={"enabled": False}))
    metrics = prepare(config, tmp_path / "out", progress=lambda _: None)

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    damaged = {d["path"].rsplit("/", 1)[-1]: d["problem"] for d in report["damaged_files"]}
    assert set(damaged) == {"shard.jsonl.gz", "cut.parquet"}
    assert "truncated" in damaged["shard.jsonl.gz"] and damaged["cut.parquet"].startswith("parquet:")
    kept = {r["id"] for r in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    salvaged = {i for i in kept if i.startswith("z")}
    assert 0 < len(salvaged) < len(shard), "the records before the damage are kept like any others"
    assert salvaged == {f"z{i}" for i in range(len(salvaged))}
    # The first n0..n9 keep their ids; the repeats are renamed, and all 40 are kept.
    assert {f"n{i}" for i in range(30)} | {f"n{i}~2" for i in range(10)} <= kept
    assert report["duplicate_ids"] == 10
    assert report["dropped_by_reason"]["corrupt:file"] == 2
    assert report["read"] == report["kept"] + sum(report["dropped_by_reason"].values())
    assert metrics["documents"] == len(kept) == 30 + 10 + len(salvaged) + 2
    assert "Damaged files (2)" in (tmp_path / "out" / "report.md").read_text()
    dropped = pq.read_table(tmp_path / "out" / "dropped").to_pylist()
    assert {r["source"].rsplit("/", 1)[-1] for r in dropped if r["reason"] == "corrupt:file"} == set(damaged)
