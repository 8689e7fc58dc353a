"""Inputs in Hugging Face's formats, read by the data stage's reader and by finetune's: folders written by
`save_to_disk` (a Dataset; a DatasetDict and its split), a `datasets` cache folder and its `.arrow` shards,
parquet and `.jsonl.zst` conversations, and hf:// paths on a machine that cannot reach the Hub. Every record
is accounted for: kept, or dropped under its reason. Built here with `datasets` from real text."""

from __future__ import annotations

import gzip
import io
import json
import threading
from collections import Counter
from itertools import islice
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from jobs import data as data_job
from jobs import finetune as finetune_job
from jobs import pipeline as pipeline_job
from solo.data import files, hf
from solo.data.config import DataConfig, InputSpec
from solo.data.files import CORRUPT_FILE
from solo.data.read import check_inputs, input_records
from solo.errors import SoloError
from solo.train.chat_formats import SkipCounts, read_conversations
from solo.train.config import FinetuneConfig
from solo.train.sft import build_sft_rows

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def c4(n: int) -> list[dict]:
    with (DATA / "webtext" / "c4_en_train_first1000.jsonl").open() as f:
        return [json.loads(line) for line in islice(f, n)]


def alpaca(n: int) -> list[dict]:
    return json.loads((DATA / "alpaca" / "alpaca_5000.json").read_text())[:n]


def records_of(spec: InputSpec) -> list[dict]:
    check_inputs(DataConfig(inputs=[spec]))
    return list(input_records(spec))


def conversations_of(source: Path | str, split: str | None = None) -> tuple[list, SkipCounts]:
    skipped = SkipCounts()
    return list(read_conversations(str(source), "auto", None, skipped, split)), skipped


@pytest.fixture(autouse=True)
def quiet_datasets():
    datasets.disable_progress_bars()


# ---------------------------------------------------------------- the data stage's reader


def test_a_saved_dataset_is_read_through_its_own_text_and_id_columns(tmp_path):
    docs = c4(30)
    saved = datasets.Dataset.from_dict({"body": [d["text"] for d in docs], "url": [d["url"] for d in docs]})
    saved.save_to_disk(tmp_path / "c4", max_shard_size="20KB")  # several shards, read in order
    assert len(list((tmp_path / "c4").glob("*.arrow"))) > 1
    records = records_of(InputSpec(path=str(tmp_path / "c4"), text_field="body", id_field="url"))
    assert [r["text"] for r in records] == [d["text"] for d in docs]
    assert [r["id"] for r in records] == [d["url"] for d in docs]
    assert all(r["reason"] == "" and ".arrow:" in r["source"] for r in records)


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".zst", zstandard.ZstdCompressor().compress)])
def test_a_file_compressed_member_by_member_is_read_to_its_end(tmp_path, suffix, compress):
    """bgzip, pigz and pzstd write many members (frames) to a file: each is read, however far into the file."""
    docs = c4(300)
    parts = [docs[:1], docs[1:150], docs[150:]]
    payload = b"".join(compress("".join(json.dumps(d) + "\n" for d in part).encode()) for part in parts)
    assert len(payload) > 3 * (1 << 16)
    shard = tmp_path / f"c4.jsonl{suffix}"
    shard.write_bytes(payload)
    records = records_of(InputSpec(path=str(shard), id_field="url"))
    assert [r["id"] for r in records] == [d["url"] for d in docs] and not any(r["reason"] for r in records)
    found, skipped = conversations_of(shard)  # finetune's reader, to its end too: none of them is a conversation
    assert found == [] and skipped.total == 300


def test_a_jsonl_shard_is_read_as_it_is_decompressed_a_batch_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "JSONL_BATCH", 100)
    lines = [json.dumps(d) for d in c4(250)] + ["{cut off"]
    payload = zstandard.ZstdCompressor().compress("\n".join(lines).encode())
    batches = list(files.jsonl_records(InputSpec(path="c4"), Path("c4.jsonl.zst"), io.BytesIO(payload)))
    assert len(batches) > 1 and all(len(b) >= 100 for b in batches[:-1])  # never the whole shard at once
    assert [r for b in batches for r in b] == files.parse_file(InputSpec(path="c4"), Path("c4.jsonl.zst"), payload)
    assert batches[-1][-1]["reason"].startswith("corrupt:json")


def test_a_saved_dataset_dict_is_read_one_split_at_a_time(tmp_path):
    docs = c4(12)
    saved = datasets.DatasetDict({"train": datasets.Dataset.from_list(docs[:8]),
                                  "test": datasets.Dataset.from_list(docs[8:])})
    saved.save_to_disk(tmp_path / "dict")
    test = records_of(InputSpec(path=str(tmp_path / "dict"), split="test"))
    assert [r["text"] for r in test] == [d["text"] for d in docs[8:]]
    with pytest.raises(SoloError, match="DatasetDict with the splits train, test: set split"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "dict"))]))
    with pytest.raises(SoloError, match="no split 'validation'; its splits: train, test"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "dict"), split="validation")]))


def test_a_folder_holding_saved_datasets_reads_their_records_not_their_descriptions(tmp_path):
    docs = c4(7)
    datasets.Dataset.from_list(docs[:3]).save_to_disk(tmp_path / "corpora" / "one")
    datasets.DatasetDict({"a": datasets.Dataset.from_list(docs[3:5]), "b": datasets.Dataset.from_list(docs[5:])}
                         ).save_to_disk(tmp_path / "corpora" / "dict")
    records = records_of(InputSpec(path=str(tmp_path / "corpora"), id_field="url"))
    assert sorted(r["id"] for r in records) == sorted(d["url"] for d in docs)
    assert not any(r["reason"] for r in records)


def test_a_split_names_only_a_dataset_dict(tmp_path):
    datasets.Dataset.from_list(c4(2)).save_to_disk(tmp_path / "one")
    with pytest.raises(SoloError, match="is a Dataset, not a DatasetDict"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "one"), split="train")]))
    (tmp_path / "c4.jsonl").write_text("".join(json.dumps(d) + "\n" for d in c4(2)))
    with pytest.raises(SoloError, match="split applies to a folder written by DatasetDict.save_to_disk"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "c4.jsonl"), split="train")]))


def test_a_datasets_cache_folder_and_its_arrow_shards(tmp_path):
    docs = c4(9)
    for name, part in (("train", docs[:6]), ("test", docs[6:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    loaded = datasets.load_dataset("json", data_files={s: str(tmp_path / f"{s}.jsonl") for s in ("train", "test")},
                                   cache_dir=str(tmp_path / "cache"))
    shard = Path(loaded["test"].cache_files[0]["filename"])  # Arrow's streaming format, as datasets writes it
    assert shard.suffix == ".arrow" and not shard.read_bytes().startswith(b"ARROW1")
    assert [r["text"] for r in records_of(InputSpec(path=str(shard)))] == [d["text"] for d in docs[6:]]
    # The cache folder holds every split side by side, and its dataset_info.json is no record.
    folder = shard.parent
    train = records_of(InputSpec(path=str(folder), split="train", id_field=None))
    assert [r["text"] for r in train] == [d["text"] for d in docs[:6]]
    with pytest.raises(SoloError, match="splits test, train"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(folder))]))


def test_an_arrow_file_is_read_a_record_batch_at_a_time(tmp_path):
    docs = c4(10)
    table = pa.table({"text": [d["text"] for d in docs]})
    with pa.OSFile(str(tmp_path / "docs.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=3):
            writer.write_batch(batch)
    assert len(list(hf.arrow_batches(tmp_path / "docs.arrow"))) == 4
    assert [r["text"] for r in records_of(InputSpec(path=str(tmp_path / "docs.arrow")))] == [d["text"] for d in docs]


def test_every_arrow_record_is_kept_or_dropped_with_its_reason(tmp_path):
    """A row without text is corrupt, a shard cut short gives its rows before the damage and one corrupt:file
    row: what comes out accounts for every row that went in."""
    docs = c4(20)
    datasets.Dataset.from_dict({"text": [d["text"] for d in docs] + [None, None]}).save_to_disk(tmp_path / "saved")
    saved = records_of(InputSpec(path=str(tmp_path / "saved")))
    assert Counter(r["reason"] for r in saved) == {"": 20, "corrupt:no_text": 2}

    cut = tmp_path / "cut.arrow"
    table = pa.table({"text": [d["text"] for d in docs]})
    with pa.OSFile(str(cut), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=5):
            writer.write_batch(batch)
    cut.write_bytes(cut.read_bytes()[:-200])  # the last batch is gone
    damaged = records_of(InputSpec(path=str(cut)))
    kept = [r for r in damaged if not r["reason"]]
    assert 0 < len(kept) < 20 and [r["text"] for r in kept] == [d["text"] for d in docs[:len(kept)]]
    assert [r["reason"] for r in damaged if r["reason"]] == [CORRUPT_FILE]
    assert "after 15 records" in damaged[-1]["text"]


def test_a_missing_text_column_is_named_before_anything_runs(tmp_path):
    datasets.Dataset.from_dict({"body": ["one", "two"]}).save_to_disk(tmp_path / "saved")
    with pytest.raises(SoloError, match=r"no column 'text' \(text_field\); its columns: body"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "saved"))]))


def test_a_dataset_folder_whose_description_is_broken_is_one_clear_error(tmp_path):
    datasets.Dataset.from_list(c4(2)).save_to_disk(tmp_path / "saved")
    (tmp_path / "saved" / "state.json").write_text("{not json")
    with pytest.raises(SoloError, match="state.json is damaged"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "saved"))]))
    datasets.Dataset.from_list(c4(2)).save_to_disk(tmp_path / "gone")
    next((tmp_path / "gone").glob("*.arrow")).unlink()
    with pytest.raises(SoloError, match="names shards that are not there"):
        check_inputs(DataConfig(inputs=[InputSpec(path=str(tmp_path / "gone"))]))


# ---------------------------------------------------------------- hf:// with no Hub to reach


def test_an_hf_path_with_no_hub_to_reach_fails_at_once_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(hf.hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nobody answers
    with pytest.raises(SoloError, match=r"hf://datasets/HuggingFaceFW/fineweb: cannot reach http://127.0.0.1:9"):
        check_inputs(DataConfig(inputs=[InputSpec(path="hf://datasets/HuggingFaceFW/fineweb")]))


def test_an_hf_path_offline_reads_the_cache_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(hf.hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf.hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SoloError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        hf.local_path("hf://datasets/HuggingFaceFW/fineweb/sample/10BT")


def test_a_name_lookup_that_never_returns_is_given_up_on(monkeypatch):
    """urlopen's timeout does not bound the name lookup: the probe gives up on it by its own deadline."""
    never = threading.Event()
    monkeypatch.setattr(hf.urllib.request, "urlopen", lambda *args, **kwargs: (never.wait(), io.BytesIO())[1])
    monkeypatch.setattr(hf, "HUB_TIMEOUT_S", 0.05)
    assert hf._unreachable("https://huggingface.co") == "no answer in 0.1 s"
    never.set()


def test_hf_paths_are_parsed_or_refused():
    assert hf.parse_hub_path("hf://datasets/allenai/c4@main/en/train") == ("allenai/c4", "main", "en/train")
    assert hf.parse_hub_path("hf://datasets/allenai/c4") == ("allenai/c4", None, "")
    assert hf.parse_hub_path("hf://datasets/o/n@refs%2Fconvert%2Fparquet/default") == (
        "o/n", "refs/convert/parquet", "default")
    with pytest.raises(SoloError, match="hf://datasets/OWNER/NAME"):
        hf.parse_hub_path("hf://models/gpt2")


# ---------------------------------------------------------------- finetune's conversations


def test_alpaca_records_in_parquet_are_conversations(tmp_path):
    rows = alpaca(30) + [{"instruction": "Say hi.", "input": "", "output": ""}]  # no answer: skipped, counted
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "alpaca.parquet", row_group_size=8)
    found, skipped = conversations_of(tmp_path / "alpaca.parquet")
    assert len(found) == 30 and skipped.reasons == {"empty message": 1}
    assert found[0].messages[-1] == {"role": "assistant", "content": rows[0]["output"].strip()}
    assert found[0].id == "alpaca.parquet:0"  # a null id column is no id: the record's place names it


def test_conversations_saved_by_datasets_are_read_from_their_split(tmp_path):
    def chat(row: dict) -> dict:
        return {"messages": [{"role": "user", "content": row["instruction"]},
                             {"role": "assistant", "content": row["output"]}]}

    pairs = alpaca(12)
    bad = {"messages": [{"role": "narrator", "content": "Once upon a time."}]}
    datasets.DatasetDict({"train": datasets.Dataset.from_list([chat(p) for p in pairs[:10]] + [bad]),
                          "test": datasets.Dataset.from_list([chat(p) for p in pairs[10:]])}
                         ).save_to_disk(tmp_path / "chats")
    found, skipped = conversations_of(tmp_path / "chats", split="train")
    assert [c.messages[0]["content"] for c in found] == [p["instruction"] for p in pairs[:10]]
    assert skipped.reasons == {"unknown role": 1}
    with pytest.raises(SoloError, match="splits train, test: set split"):
        conversations_of(tmp_path / "chats")


def test_sft_rows_from_parquet_and_from_a_saved_split_account_for_every_record(tmp_path, tokenizer):
    pairs = alpaca(24)
    rows = pairs[:20] + [{"instruction": "Say hi.", "output": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "alpaca.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(pairs[20:]), "test": datasets.Dataset.from_list(rows)}
                         ).save_to_disk(tmp_path / "saved")
    for data, split, records in ((tmp_path / "alpaca.parquet", None, 21), (tmp_path / "saved", "train", 4)):
        out = tmp_path / "rows" / data.name
        metrics = build_sft_rows(tokenizer, FinetuneConfig(data=str(data), split=split, seq_len=512), out)
        report = json.loads((out / "report.json").read_text())
        assert report["conversations"] + report["skipped"] == records, report
        assert report["conversations"] > 0 and metrics["conversations"] == report["conversations"]
        assert report["skipped"] == sum(report["skipped_by_reason"].values())


def test_zstd_conversations_are_read_as_a_stream_and_a_cut_file_is_refused(tmp_path):
    lines = [json.dumps(p) + "\n" for p in alpaca(300)] + ["{not json\n"]
    compressed = zstandard.ZstdCompressor().compress("".join(lines).encode())
    (tmp_path / "alpaca.jsonl.zst").write_bytes(compressed)
    found, skipped = conversations_of(tmp_path / "alpaca.jsonl.zst")
    assert len(found) + skipped.total == 301 and skipped.reasons["not JSON"] == 1
    (tmp_path / "alpaca.json.zst").write_bytes(zstandard.ZstdCompressor().compress(json.dumps(alpaca(5)).encode()))
    assert len(conversations_of(tmp_path / "alpaca.json.zst")[0]) == 5
    (tmp_path / "cut.jsonl.zst").write_bytes(compressed[:len(compressed) // 2])
    with pytest.raises(SoloError, match=r"cut.jsonl.zst is damaged after [\d,]+ records \(.*truncated"):
        conversations_of(tmp_path / "cut.jsonl.zst")


def test_a_folder_of_conversation_files_or_none(tmp_path):
    (tmp_path / "chats").mkdir()
    pq.write_table(pa.Table.from_pylist(alpaca(4)), tmp_path / "chats" / "a.parquet")
    (tmp_path / "chats" / "b.json").write_text(json.dumps(alpaca(7)[4:]))
    (tmp_path / "chats" / "notes.txt").write_text("not conversations")
    found, skipped = conversations_of(tmp_path / "chats")
    assert [c.messages[0]["content"].split("\n\n")[0] for c in found] == [p["instruction"] for p in alpaca(7)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not conversations")
    with pytest.raises(SoloError, match="no jsonl, json, parquet or arrow files"):
        conversations_of(tmp_path / "empty")


# ---------------------------------------------------------------- on the command line: one line, exit 2, before Ray


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("solo: "), err
    return err[0]


def test_bad_dataset_inputs_on_the_command_line_exit_2_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOLO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hf.hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    assert data_job.main(["--input", "hf://datasets/allenai/c4/en", "--output", str(tmp_path / "out")]) == 2
    assert "hf://datasets/allenai/c4/en: cannot reach" in one_error_line(capsys)
    saved = datasets.DatasetDict({"train": datasets.Dataset.from_list(c4(2)),
                                  "test": datasets.Dataset.from_list(c4(1))})
    saved.save_to_disk(tmp_path / "dict")
    assert pipeline_job.main(["--input", str(tmp_path / "dict"), "--output", str(tmp_path / "run")]) == 2
    assert "DatasetDict with the splits train, test: set split" in one_error_line(capsys)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("a folder of notes is no set of conversations")
    assert finetune_job.main(["--data", str(tmp_path / "notes"), "--model", str(tmp_path / "model")]) == 2
    assert "finetune data" in one_error_line(capsys)
    assert finetune_job.main(["--data", str(tmp_path / "dict"), "--set", "split=validation"]) == 2
    assert "no split 'validation'; its splits: train, test" in one_error_line(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run" / "data").exists()
