import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from solo.data.clean import clean
from solo.data.config import DataConfig, FilterConfig, InputSpec, LanguageConfig
from solo.data.files import input_format, parse_file
from solo.data.normalize import normalize
from solo.data.read import check_inputs
from solo.errors import SoloError


def test_normalize_nfc_controls_and_whitespace():
    assert normalize("Cafe\u0301\x00  au   lait\r\n\n\n\nnext\t line ") == "Caf\u00e9 au lait\n\nnext line"


def test_corrupt_jsonl_records_are_counted_not_fatal():
    spec = InputSpec(path="x.jsonl", domain="web")
    payload = b'{"id": "a", "text": "good"}\nnot json\n{"id": "b"}\n[1, 2]\n\n{"text": "no id"}\n'
    records = parse_file(spec, Path("x.jsonl"), payload)
    reasons = [r["reason"] for r in records]
    assert reasons[0] == "" and records[0]["id"] == "a"
    assert reasons[1].startswith("corrupt:json")
    assert reasons[2] == "corrupt:no_text"
    assert reasons[3] == "corrupt:not_an_object"
    assert reasons[4] == "" and records[4]["id"]  # an id is made, stable
    assert parse_file(spec, Path("x.jsonl"), payload)[4]["id"] == records[4]["id"]


def test_gzip_json_list_and_bad_utf8():
    spec = InputSpec(path="d", domain="d")
    listed = gzip.compress(json.dumps([{"text": "one"}, {"text": "two"}]).encode())
    assert [r["text"] for r in parse_file(spec, Path("d/list.json.gz"), listed)] == ["one", "two"]
    broken = parse_file(spec, Path("d/broken.txt"), b"\xff\xfe bad")
    assert broken[0]["reason"].startswith("corrupt:utf8")


def test_clean_applies_length_rules_and_keys_exact_duplicates():
    batch = {"id": ["1", "2", "3", "4"], "text": ["x" * 50, "short", "x" * 50, ""], "domain": ["d"] * 4,
             "reason": ["", "", "", ""], "duplicate_of": [""] * 4}
    config = DataConfig(inputs=[InputSpec(path="x", domain="d", quality_filters=False)], min_chars=10, max_chars=1000,
                        filters=FilterConfig(language=LanguageConfig(enabled=False)))
    out = clean(batch, config)
    assert out["reason"] == ["", "too_short", "", "empty"]
    assert out["dedup_key"][0] == out["dedup_key"][2] != ""


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# Text that compresses about as web text does, so that half a compressed file holds whole blocks of records.
ROWS = [{"id": f"r{i}", "text": " ".join(f"w{rng.randrange(10**6)}" for _ in range(60))}
        for rng in [random.Random(7)] for i in range(2000)]


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress], ids=["gzip", "zstd"])
def test_a_truncated_compressed_file_gives_its_records_before_the_damage_and_one_corrupt_file_row(compress):
    spec = InputSpec(path="d", domain="web")
    whole = compress(_jsonl(ROWS))
    assert [r["id"] for r in parse_file(spec, Path("d/a.jsonl.gz"), whole)] == [r["id"] for r in ROWS]
    cut = parse_file(spec, Path("d/a.jsonl.gz"), whole[:len(whole) // 2])
    records, (damaged,) = cut[:-1], cut[-1:]
    assert damaged["reason"] == "corrupt:file" and damaged["source"] == "d/a.jsonl.gz"
    assert "truncated" in damaged["text"] and f"after {len(records):,} records" in damaged["text"]
    assert 0 < len(records) < len(ROWS)
    assert [r["id"] for r in records] == [r["id"] for r in ROWS[:len(records)]], "the records before, in order"
    assert all(r["reason"] == "" for r in records), "the line the damage cut short is not a record"


def test_a_corrupt_gzip_stream_and_a_named_but_plain_file():
    spec = InputSpec(path="d", domain="web")
    whole = gzip.compress(_jsonl(ROWS))
    garbled = whole[:200] + bytes(b ^ 0xFF for b in whole[200:400]) + whole[400:]
    *_, damaged = parse_file(spec, Path("d/b.jsonl.gz"), garbled)
    assert damaged["reason"] == "corrupt:file" and damaged["text"].startswith("gzip:")
    # Compression is read from the bytes, not the name: a .gz that is not gzipped reads as it is.
    assert len(parse_file(spec, Path("d/plain.jsonl.gz"), _jsonl(ROWS[:3]))) == 3
    assert input_format(spec, Path("d/web.jsonl.zst")) == "jsonl"


def test_inputs_are_checked_before_anything_runs(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SoloError, match="holds no documents"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "empty.jsonl"))]))
    (tmp_path / "body.jsonl").write_bytes(_jsonl([{"body": "x", "title": "y"}] * 3))
    with pytest.raises(SoloError, match=r"body.jsonl: no record of its first 3 has the field 'text' \(text_field\); "
                                        r"their fields: body, title"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "body.jsonl"))]))
    check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "body.jsonl"), text_field="body")]))
    with pytest.raises(SoloError, match="'doc_id' \\(id_field\\)"):  # an id field the config names must be there
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "body.jsonl"), text_field="body",
                                                  id_field="doc_id")]))
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "t.parquet")
    with pytest.raises(SoloError, match=r"t.parquet has no column 'text' \(its columns: content\)"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "t.parquet"))]))
    (tmp_path / "half.jsonl.gz").write_bytes(gzip.compress(_jsonl(ROWS))[:300])
    check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "half.jsonl.gz"))]))  # damaged: read, not refused
