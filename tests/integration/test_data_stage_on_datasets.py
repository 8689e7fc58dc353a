"""The data stage, on a real local Ray, over inputs in Hugging Face's formats beside a `.jsonl.zst` shard: a
folder written by Dataset.save_to_disk (its own text and id columns), one split of a DatasetDict, and an arrow
shard cut short. Every record that went in is kept or dropped under its reason."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from solo.data.config import DataConfig, DedupConfig, FilterConfig, InputSpec
from solo.data.stage import prepare

pytestmark = pytest.mark.integration

WEBTEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "webtext"


def c4(start: int, n: int) -> list[dict]:
    with (WEBTEXT / "c4_en_train_first1000.jsonl").open() as f:
        return [json.loads(line) for line in islice(f, start, start + n)]


def test_hugging_face_inputs_through_the_data_stage_account_for_every_record(ray_local, tmp_path):
    datasets.disable_progress_bars()
    web = c4(0, 24)
    datasets.Dataset.from_dict({"body": [d["text"] for d in web], "url": [d["url"] for d in web]}).save_to_disk(
        tmp_path / "saved", num_shards=2)
    splits = c4(24, 10)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(splits[:6]),
                          "validation": datasets.Dataset.from_list(splits[6:])}).save_to_disk(tmp_path / "dict")
    fineweb = json.loads((WEBTEXT / "fineweb_first300.json").read_text())[:15]
    lines = [json.dumps({"id": d["id"], "text": d["text"]}) for d in fineweb] + ["{cut off"]
    (tmp_path / "fineweb.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("\n".join(lines).encode()))
    table = pa.table({"text": [d["text"] for d in c4(34, 12)]})
    with pa.OSFile(str(tmp_path / "cut.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=4):
            writer.write_batch(batch)
    (tmp_path / "cut.arrow").write_bytes((tmp_path / "cut.arrow").read_bytes()[:-100])  # its last batch is gone

    config = DataConfig(inputs=[InputSpec(path=str(tmp_path / "saved"), text_field="body", id_field="url"),
                                InputSpec(path=str(tmp_path / "dict"), split="validation", id_field="url"),
                                InputSpec(path=str(tmp_path / "fineweb.jsonl.zst")),
                                InputSpec(path=str(tmp_path / "cut.arrow"))],
                        min_chars=10, dedup=DedupConfig(near=False),
                        filters=FilterConfig(boilerplate={"enabled": False}, pii={"enabled": False},
                                             language={"enabled": False}, gopher_quality={"enabled": False},
                                             gopher_repetition={"enabled": False}, c4={"enabled": False},
                                             fineweb={"enabled": False}))
    prepare(config, tmp_path / "out", progress=lambda _: None)

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = pq.read_table(tmp_path / "out" / "data").to_pylist()
    dropped = pq.read_table(tmp_path / "out" / "dropped").to_pylist()
    # 24 saved rows, the 4 of the validation split, 15 + 1 jsonl lines, 8 arrow rows before the damage + the file.
    assert report["read"] == len(kept) + len(dropped) == 24 + 4 + 16 + 9
    assert report["read"] == report["kept"] + sum(report["dropped_by_reason"].values())
    # The report tallies a corrupt record under `corrupt` (its reason in full is in dropped/), a damaged file apart.
    reasons = Counter(r["reason"] if r["reason"] == "corrupt:file" else r["reason"].split(":", 1)[0]
                      if r["reason"].startswith("corrupt") else r["reason"] for r in dropped)
    assert reasons == Counter(report["dropped_by_reason"])
    assert report["dropped_by_reason"]["corrupt:file"] == 1 and report["dropped_by_reason"]["corrupt"] == 1
    assert [r["source"] for r in dropped if r["reason"].startswith("corrupt:json")] == [
        f"{tmp_path / 'fineweb.jsonl.zst'}:16"]
    ids = {r["id"] for r in kept} | {r["id"] for r in dropped}
    assert {d["url"] for d in web} <= ids, "the saved dataset's own ids, from its id_field"
    assert {str(d["id"]) for d in fineweb} <= ids
    assert {d["url"] for d in splits[6:]} <= ids and not {d["url"] for d in splits[:6]} & ids, "validation alone"
    assert [d["path"] for d in report["damaged_files"]] == [str(tmp_path / "cut.arrow")]
