"""The tokenizer stage: its hash-spread sample, raw inputs, held-out report, and `--input`."""

import gzip
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from solo.data import corpus, read
from solo.data.config import InputSpec
from solo.tokens import tokenizer as tok
from solo.tokens import train_bpe as bpe
from solo.tokens.config import TokenizerConfig
from solo.tokens.shards import is_validation

VAL = 0.1


@pytest.fixture(scope="module")
def texts():
    return [d["text"] for d in corpus.documents(max_documents=120)]


def docs(n, size=100, domain="web"):
    return [(f"doc{i}", "x" * size, domain) for i in range(n)]


def test_cutoff_takes_documents_in_priority_order_until_the_budget_is_reached():
    priorities = np.array([50, 10, 40, 20, 30], dtype=np.uint64)
    sizes = np.array([5, 5, 5, 5, 5])
    assert bpe.sample_cutoff(priorities, sizes, 12) == (40, 3, 15)  # the third crosses 12, and is taken
    assert bpe.sample_cutoff(priorities, sizes, 1) == (20, 1, 5)    # one document at the least
    assert bpe.sample_cutoff(priorities, sizes, 10**6) == (2**64, 5, 25)


def test_sample_spreads_over_the_corpus_whatever_its_order():
    corpus_docs = docs(2000)
    found = bpe.scan(corpus_docs, max_bytes=20_000, val_fraction=VAL)
    picked = [int(t[0][3:]) for t in corpus_docs if not is_validation(t[0], VAL)
              and bpe.sample_priority(t[0]) < found.cutoff]
    assert found.sample_bytes == 20_000 and found.sample_documents == len(picked) == 200
    assert np.histogram(picked, bins=4, range=(0, 2000))[0].min() > 25  # every quarter, not the first 200
    shuffled = random.Random(0).sample(corpus_docs, len(corpus_docs))
    assert bpe.scan(shuffled, 20_000, VAL).cutoff == found.cutoff  # the same documents, read in any order
    assert len(list(bpe.sample(shuffled, found.cutoff, VAL))) == 200


def test_held_out_is_the_validation_documents_per_domain_and_never_in_the_sample():
    corpus_docs = docs(500, domain="web") + [(f"wiki{i}", "y" * 100, "wiki") for i in range(500)]
    found = bpe.scan(corpus_docs, max_bytes=10**9, val_fraction=VAL)
    for domain in ("web", "wiki"):
        expected = [i for i, _, d in corpus_docs if d == domain and is_validation(i, VAL)]
        assert len(found.held_out[domain]) == len(expected) > 0
    sample = list(bpe.sample(corpus_docs, found.cutoff, VAL))
    assert len(sample) == found.sample_documents == 1000 - len(found.held_out["web"]) - len(found.held_out["wiki"])


def test_raw_documents_read_every_format_the_data_stage_reads(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "a1", "text": "Hello   world\r\n"}) + "\n{not json\n")
        f.write(json.dumps({"id": "a2", "text": "Second"}) + "\n")
    (folder / "b.json").write_text(json.dumps([{"text": "From a JSON list"}]))
    (folder / "c.txt").write_text("Plain text file")
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["Parquet row", None]}), folder / "d.parquet")
    got = list(read.raw_documents([InputSpec(path=str(folder), domain="mine")]))
    assert [text for _, text, _ in got] == ["Hello world", "Second", "From a JSON list", "Plain text file",
                                            "Parquet row"]
    assert {d for _, _, d in got} == {"mine"} and got[0][0] == "a1"
    assert len(list(read.raw_documents([InputSpec(path=str(folder),
                                                  max_documents=3)]))) == 3  # corrupt ones not counted


def test_stage_writes_a_tokenizer_and_a_report_beside_plain_bpe(tmp_path, texts):
    corpus_docs = [(f"d{i}", t, "docs" if i % 2 else "more") for i, t in enumerate(texts)]
    config = TokenizerConfig(vocab_size=600, min_frequency=2, sample_bytes=200_000)
    metrics = bpe.train_stage(lambda: iter(corpus_docs), config, 0.2, tmp_path, progress=lambda _: None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(tok.load(tmp_path)) == report["vocab_size"] == metrics["vocab_size"] == 600
    assert set(report["held_out"]) == {"docs", "more", "all"}
    held = report["held_out"]["all"]
    assert held["documents"] == sum(is_validation(f"d{i}", 0.2) for i in range(len(texts)))
    for name in ("solo", "plain"):
        assert 1.5 < held[name]["bytes_per_token"] < 8 and held[name]["tokens_per_word"] > 1
    assert report["sample"]["bytes"] == metrics["sample_bytes"] <= 200_000 + max(len(t.encode()) for t in texts)
    assert "| all |" in (tmp_path / "report.md").read_text()


def test_train_tokenizer_job_reads_raw_inputs(tmp_path, monkeypatch, capsys, texts):
    from solo import pipeline
    from solo.cli.jobs import stage_job

    monkeypatch.setattr(pipeline, "init_ray", lambda *a, **k: None)  # the tokenizer needs no Ray
    monkeypatch.setenv("SOLO_HOME", str(tmp_path / "home"))
    raw = tmp_path / "notes.jsonl"
    raw.write_text("".join(json.dumps({"id": f"n{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "tok"
    argv = ["--input", str(raw), "--output", str(out), "--set", "vocab_size=500", "--set", "sample_bytes=100000"]
    assert stage_job("tokenizer", "doc", argv) == 0
    assert len(tok.load(out)) == 500
    assert set(json.loads((out / "report.json").read_text())["held_out"]) == {"notes.jsonl", "all"}
    assert list(json.loads((out / "manifest.json").read_text())["inputs"]) == [str(raw)]
    capsys.readouterr()
    assert stage_job("tokenizer", "doc", argv) == 0
    assert "up to date" in capsys.readouterr().out  # the same file and settings: not retrained


def test_pipeline_stage_trains_on_the_prepared_data(tmp_path, texts):
    from solo.pipeline import PipelineConfig, StageContext, run_tokenizer

    prepared = tmp_path / "data"
    (prepared / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts,
                             "domain": ["python-docs"] * len(texts)}), prepared / "data" / "part.parquet")
    config = PipelineConfig(tokenizer=TokenizerConfig(vocab_size=500, sample_bytes=100_000))
    out = tmp_path / "tok"
    out.mkdir()
    metrics = run_tokenizer(StageContext(config, None, out, {"data": prepared}))
    assert metrics["vocab_size"] == len(tok.load(out)) == 500
    assert set(json.loads((out / "report.json").read_text())["held_out"]) == {"python-docs", "all"}


def test_the_tokenizer_stage_reruns_when_the_held_out_split_changes_and_only_then():
    from solo.pipeline import STAGE_BY_NAME, PipelineConfig, _config_hash

    stage, base = STAGE_BY_NAME["tokenizer"], PipelineConfig()
    changed = base.model_copy(update={"tokenize": base.tokenize.model_copy(update={"val_fraction": 0.2})})
    unrelated = base.model_copy(update={"tokenize": base.tokenize.model_copy(update={"seq_len": 512})})
    assert _config_hash(changed, stage) != _config_hash(base, stage)
    assert _config_hash(unrelated, stage) == _config_hash(base, stage)
