"""The data stage on a real local Ray: near-dedup, decontamination and mixing end to end, and a run
killed half way that resumes from its committed passes and writes what an uninterrupted run writes."""

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from solo.config import REPO_ROOT, default_config_path, load_config
from solo.data import neardedup
from solo.data import stage as data
from solo.data.config import DataConfig, DecontamConfig, EvalSetSpec, InputSpec, MixingConfig
from solo.pipeline import PipelineConfig, run_pipeline
from solo.store import RunStore

pytestmark = pytest.mark.integration

DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> DataConfig:
    """Real C4 pages as `web`, with a near copy, an exact copy and a page quoting GSM8K; WikiText-2 lines as `wiki`."""
    folder = tmp_path_factory.mktemp("raw")
    lines = (DATA / "webtext" / "c4_en_train_first1000.jsonl").read_text().splitlines()
    pages = [json.loads(line)["text"] for line in lines if len(line) > 3000][:40]
    words = pages[0].split()
    near = " ".join(words[:30] + words[40:])  # a 10-word span cut from a long page
    question = json.loads((DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[3])["question"]
    rows = [{"id": f"web-{i:03d}", "text": t} for i, t in enumerate(pages)]
    rows += [{"id": "web-near", "text": near}, {"id": "web-exact", "text": pages[1]},
             {"id": "web-quiz", "text": f"Can anyone solve this?\n{question}\nThanks in advance, everyone."}]
    random.Random(0).shuffle(rows)
    (folder / "web.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wiki = [p.strip() for p in (DATA / "wikitext2" / "valid.txt").read_text().split("\n \n") if len(p) > 800][:20]
    (folder / "wiki.jsonl").write_text("".join(json.dumps({"id": f"wiki-{i:03d}", "text": t}) + "\n"
                                               for i, t in enumerate(wiki)))
    # The quality filters off (they would judge the quiz page, not the dedup): dedup-only.yaml.
    dedup_only = load_config(DataConfig, default_config_path("data", "dedup-only"))
    return dedup_only.model_copy(update=dict(
        inputs=[InputSpec(path=str(folder / "web.jsonl"), domain="web"),
                InputSpec(path=str(folder / "wiki.jsonl"), domain="wiki")],
        decontamination=DecontamConfig(sets=[EvalSetSpec(kind="gsm8k", path="../shared/data/gsm8k/test.jsonl")]),
        mixing=MixingConfig(weights={"web": 0.5, "wiki": 0.5}, seed=3)))


def rows(folder: Path) -> list[tuple]:
    return sorted(tuple(r.values()) for r in pq.read_table(folder).to_pylist())


def test_dedup_decontam_mixing_and_resume_after_a_kill(ray_local, config, tmp_path, monkeypatch):
    # The whole run through the pipeline, stopped after its first stage (`jobs.pipeline --until data`).
    run = RunStore(tmp_path / "run")
    assert list(run_pipeline(PipelineConfig(data=config), run, until="data")) == ["data"]
    assert not run.stage_dir("tokenizer").exists() and not run.stage_dir("tokenizer.partial").exists()
    whole = run.stage_dir("data")
    dropped = {r["id"]: r for r in pq.read_table(whole / "dropped").to_pylist()}
    assert (dropped["web-near"]["reason"], dropped["web-near"]["duplicate_of"]) == ("dup_near", "web-000")
    assert (dropped["web-exact"]["reason"], dropped["web-exact"]["duplicate_of"]) == ("dup_exact", "web-001")
    assert dropped["web-quiz"]["reason"] == "decontam:gsm8k"
    report = json.loads((whole / "report.json").read_text())
    assert report["dedup"]["near_duplicates"] == 1 and report["dedup"]["exact_duplicates"] == 1
    mixed = report["mixing"]["domains"]
    assert mixed["web"]["after"] == mixed["wiki"]["after"] == (mixed["web"]["before"] + mixed["wiki"]["before"]) // 2
    kept = pq.read_table(whole / "data").column("domain").to_pylist()
    assert kept.count("web") == kept.count("wiki") == mixed["web"]["after"]
    assert not (whole / "_work").exists()

    # Killed after the staged pass (which signs the documents too) was committed, while clustering.
    resumed = tmp_path / "resumed"
    real_find = neardedup.find_in_signatures

    def killed(*args, **kwargs):
        raise RuntimeError("killed half way")

    monkeypatch.setattr(neardedup, "find_in_signatures", killed)
    with pytest.raises(RuntimeError, match="killed"):
        data.prepare(config, resumed)
    assert (resumed / "_work" / "staged" / "_COMMITTED").is_file()

    def redone(*args, **kwargs):
        raise AssertionError("a committed pass ran again")

    monkeypatch.setattr(neardedup, "find_in_signatures", real_find)
    monkeypatch.setattr(data, "read_inputs", redone)
    monkeypatch.setattr(neardedup, "sign", redone)
    data.prepare(config, resumed)
    assert rows(resumed / "data") == rows(whole / "data")
    assert rows(resumed / "dropped") == rows(whole / "dropped")
    again = json.loads((resumed / "report.json").read_text())
    assert {k: again[k] for k in ("read", "kept", "dropped_by_reason", "mixing")} == \
        {k: report[k] for k in ("read", "kept", "dropped_by_reason", "mixing")}
