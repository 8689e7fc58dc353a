"""Every stage survives a kill: each stage's job is killed with SIGKILL at a chosen point (solo.faults: mid
pass, just after a commit, mid checkpoint), run again, and must give the same output as a run that was
never killed, without doing again the work it had committed."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from solo.config import REPO_ROOT
from solo.data import corpus
from solo.data.config import DataConfig, InputSpec
from solo.data.stage import prepare
from solo.evals.config import EvalConfig
from solo.evals.stage import evaluate
from solo.pipeline import PipelineConfig
from solo.tokens.shards import is_validation
from solo.tokens.tokenize import tokenize
from solo.tokens.tokenizer import load

pytestmark = pytest.mark.integration
DOCUMENTS = 1200  # three blocks of tokenize's 512 documents
EVALUATE = ["--set", "tasks=[arc_challenge, mmlu]", "--set", "max_questions=4", "--set", "max_documents=6",
            "--set", "max_new_tokens=4", "--set", "shots.mmlu=0"]


def job(module: str, args: list[str], home: Path, fault: str | None = None, launcher: bool = False):
    env = {**os.environ, "SOLO_HOME": str(home), "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    if fault:
        env.update({"SOLO_FAULTS": fault, "SOLO_FAULTS_DIR": str(home / "faults")})
    command = ([str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1", "--master_port", "29563",
                "--module", f"jobs.{module}", "--set", "workers=1"] if launcher else
               [sys.executable, "-m", f"jobs.{module}"])
    return subprocess.run([*command, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


def killed(done: subprocess.CompletedProcess, point: str) -> None:
    out = done.stdout + done.stderr
    assert f"solo.faults: kill at {point}" in out, out[-3000:]
    assert done.returncode != 0, out[-3000:]  # killed itself; or the launcher exits so, for its rank


def finished(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def digest(folder: Path) -> dict[str, str]:
    return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "manifest.json"}


def rows(folder: Path) -> list[tuple]:
    return sorted(tuple(str(v) for v in r.values()) for r in pq.read_table(folder).to_pylist())


def paragraphs() -> list[dict]:
    """The embedded corpus (484 pages) as documents of a paragraph each: enough of them for several blocks."""
    found = [{"id": f"{d['id']}-{i}", "text": p} for d in corpus.documents()
             for i, p in enumerate(d["text"].split("\n\n")) if len(p) > 200]
    return found[:DOCUMENTS]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in paragraphs()))
    return path


def test_data_killed_just_after_committing_its_staged_pass(ray_local, corpus_file, tmp_path):
    config = DataConfig(inputs=[InputSpec(path=str(corpus_file), domain="docs", quality_filters=False,
                                          max_documents=300)])
    prepare(config, tmp_path / "whole", progress=lambda _: None)
    args = ["--set", f"inputs=[{{path: {corpus_file}, domain: docs, quality_filters: false, max_documents: 300}}]",
            "--output", str(tmp_path / "killed")]
    killed(job("data", args, tmp_path, "data.staged=kill"), "data.staged")
    assert (tmp_path / "killed.partial" / "_work" / "staged" / "_COMMITTED").is_file()
    assert "reusing the committed staged pass" in finished(job("data", args, tmp_path))
    for part in ("data", "dropped"):
        assert rows(tmp_path / "killed" / part) == rows(tmp_path / "whole" / part)


def test_tokenize_killed_mid_pass(ray_local, corpus_file, tmp_path, tiny_model_dir):
    prepared = tmp_path / "prepared"  # as the data stage leaves it: parquet under data/
    (prepared / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(paragraphs()), prepared / "data" / "p.parquet")
    tokenize(prepared / "data", load(tiny_model_dir), tmp_path / "whole", 64, 0.05, 4096, progress=lambda _: None)
    args = ["--data", str(prepared), "--run", "k", "--output", str(tmp_path / "killed"), "--set", "seq_len=64",
            "--set", "rows_per_shard=4096"]
    (tmp_path / "runs" / "k").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "k" / "tokenizer")
    killed(job("tokenize", args, tmp_path, "tokenize.block=kill"), "tokenize.block")
    rerun = finished(job("tokenize", args, tmp_path))
    assert re.search(r"tokenize: [123] of 3 blocks committed by an earlier attempt", rerun), rerun[-3000:]
    assert digest(tmp_path / "killed") == digest(tmp_path / "whole")


def losses(metrics_csv: Path) -> list[tuple[int, float]]:
    with metrics_csv.open() as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_pretrain_killed_mid_checkpoint_under_the_launcher(tiny_tokens, tmp_path):
    run = tmp_path / "runs" / "p"
    for stage in ("tokenizer", "tokenize"):
        shutil.copytree(tiny_tokens / stage, run / stage)
    args = ["--run", "p", "--config", "configs/pretrain/shakespeare-cpu.yaml", "--set", "max_steps=4",
            "--set", "checkpoint_every=1", "--set", "log_every=1", "--set", "eval_every=4", "--set", "micro_batch=2",
            "--set", "global_batch=2"]
    killed(job("pretrain", args, tmp_path, "train.checkpoint.written=kill@3", launcher=True),
           "train.checkpoint.written")
    out = finished(job("pretrain", args, tmp_path, launcher=True))
    assert "resumed from step 2" in out, "step 3's checkpoint was never committed: one interval is redone"
    logged = losses(run / "pretrain" / "metrics.csv")
    assert [step for step, _ in logged] == [1, 2, 3, 3, 4]
    assert logged[2] == logged[3], "step 3 trained again gives the very loss it gave before the kill"
    (restart,) = json.loads((run / "pretrain" / "manifest.json").read_text())["restarts"]
    assert restart["resumed_from_step"] == 2


def test_finetune_worker_killed_mid_checkpoint_is_restarted_by_the_driver(tiny_model_dir, tmp_path):
    """Under Ray, a worker killed (as an out-of-memory kill would) while it writes the second checkpoint, with
    ZeRO-3 and CPU offload: the driver starts the group again from the first, which was committed. Its optimizer
    runs on the host, so the one worker is given the machine's cores, and its CPU Adam computes on all of them."""
    args = ["--run", "f", "--model", str(tiny_model_dir), "--set", "workers=1", "--set", "max_steps=3",
            "--set", "checkpoint_every=1",
            "--set", "log_every=1", "--set", "eval_every=3", "--set", "max_examples=60", "--set", "seq_len=64",
            "--set", "micro_batch=2", "--set", "global_batch=4", "--set", "strategy.zero_stage=3",
            "--set", "strategy.offload_optimizer=cpu", "--set", "strategy.offload_params=cpu"]
    out = finished(job("finetune", args, tmp_path, "train.checkpoint.written=kill@2"))
    assert "solo.faults: kill at train.checkpoint.written" in out and "training: restart 1 of at most 3" in out
    assert "resumed from step 1" in out
    stage = tmp_path / "runs" / "f" / "finetune"
    (restart,) = json.loads((stage / "manifest.json").read_text())["restarts"]
    assert restart["resumed_from_step"] == 1 and restart["reason"].startswith("restart 1 of at most 3: worker")
    logged = losses(stage / "metrics.csv")
    assert [step for step, _ in logged] == [1, 2, 2, 3]
    assert logged[1] == logged[2], "step 2 trained again gives the very loss it gave before the kill"
    cores = os.cpu_count()
    assert f"{cores} optimizer threads" in out
    assert json.loads((stage / "manifest.json").read_text())["metrics"]["optimizer_threads"] == cores


def test_evaluate_killed_just_after_committing_a_task(tiny_model_dir, tmp_path):
    run = tmp_path / "runs" / "e"
    (run / "data" / "data").mkdir(parents=True)
    held_out = list(corpus.documents(max_documents=400))
    pq.write_table(pa.Table.from_pylist(held_out), run / "data" / "data" / "p.parquet")
    for stage in ("pretrain", "finetune"):
        shutil.copytree(tiny_model_dir, run / stage)
    (run / "tokenize").mkdir()
    killed(job("evaluate", ["--run", "e", *EVALUATE], tmp_path, "evaluate.task=kill"), "evaluate.task")
    out = finished(job("evaluate", ["--run", "e", *EVALUATE], tmp_path))
    assert "evaluate: arc_challenge accuracy" in out and "(committed by an earlier attempt)" in out
    assert "evaluate: mmlu accuracy" in out
    config = EvalConfig(tasks=["arc_challenge", "mmlu"], max_questions=4, max_documents=6, max_new_tokens=4,
                        shots={"mmlu": 0})
    split = PipelineConfig().tokenize  # the held-out documents are the pipeline's
    texts = [d["text"] for d in held_out if is_validation(d["id"], split.val_fraction)][:config.max_documents]
    evaluate({s: run / s for s in ("pretrain", "finetune")}, texts, config, split.seq_len, tmp_path / "whole",
             lambda _: None)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert json.loads((run / "evaluate" / "metrics.json").read_text()) == whole
