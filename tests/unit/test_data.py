import gzip
import json
from pathlib import Path

from solo.data.clean import clean
from solo.data.config import DataConfig, FilterConfig, InputSpec, LanguageConfig
from solo.data.normalize import normalize
from solo.data.read import parse_file


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
