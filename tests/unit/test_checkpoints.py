"""A damaged checkpoint costs one checkpoint interval: every save lists its files and their sizes, and a run
resumes from the newest checkpoint that is whole, saying which newer ones it passed over and why."""

from __future__ import annotations

import json
import time
from pathlib import Path

from solo.config import load_config
from solo.store import Manifest, read_manifest, write_manifest
from solo.train.checkpoints import FolderSink, checkpoint_problem, list_files, pick, resume_from
from solo.train.config import TrainConfig
from solo.train.job import TrainJob
from solo.train.loop import train_worker


def fake_checkpoint(folder: Path, step: int, writers: int = 2) -> str:
    tag = f"step_{step:08d}"
    (folder / tag).mkdir(parents=True)
    for rank in range(writers):
        (folder / tag / f"shard_{rank}.pt").write_bytes(b"x" * (100 + rank))
        list_files(folder / tag, f"rank{rank}", writers)  # each writer lists what is there once its part is
    (folder / "latest").write_text(tag)
    return tag


def test_the_newest_whole_checkpoint_is_picked_and_the_damaged_ones_named(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    assert resume_from(tmp_path).tag == "step_00000006" and resume_from(tmp_path).skipped == ()

    with (tmp_path / "step_00000006" / "shard_1.pt").open("r+b") as shard:
        shard.truncate(40)  # a power cut mid-write
    resume = resume_from(tmp_path)
    assert resume.tag == "step_00000004"
    assert resume.skipped == ("step_00000006: shard_1.pt is 40 bytes of 101",)

    (tmp_path / "latest").write_text("step_00000008")  # `latest` written, the step itself never
    (tmp_path / "step_00000004" / "solo-files.rank1.json").unlink()  # a writer that never finished
    resume = resume_from(tmp_path)
    assert resume.tag == "step_00000002"
    assert resume.skipped == ("step_00000008 is not there", "step_00000006: shard_1.pt is 40 bytes of 101",
                              "step_00000004: 1 of its 2 writers never finished")
    assert checkpoint_problem(tmp_path, "step_00000002") == ""
    assert pick([(tmp_path, "step_00000008")]) is None, "no whole checkpoint: start over"


def test_a_run_resumes_from_the_checkpoint_before_a_damaged_one_and_records_it(tmp_path, tiny_tokens, gloo_group):
    def job(steps: int) -> TrainJob:
        config = load_config(TrainConfig, None, [
            "workers=1", "micro_batch=2", "global_batch=2", f"max_steps={steps}", "log_every=1", "eval_every=100",
            "checkpoint_every=1", "keep_checkpoints=4", "strategy.zero_stage=0", "strategy.offload_optimizer=none",
            "strategy.offload_params=none"])
        return TrainJob(config, str(tiny_tokens / "tokenize" / "train"), None, str(tiny_tokens / "tokenizer"),
                        str(tmp_path / "out"))

    (tmp_path / "out").mkdir()
    write_manifest(tmp_path / "out", Manifest(stage="pretrain", status="running", config_hash="x",
                                              started_at=time.time()))
    checkpoints = tmp_path / "out" / "checkpoints"
    train_worker(job(3), FolderSink(checkpoints, keep=4))
    newest = checkpoints / "step_00000003"
    listing = json.loads(next(newest.glob("solo-files.*.json")).read_text())
    biggest = max(listing["files"], key=listing["files"].get)
    with (newest / biggest).open("r+b") as damaged:
        damaged.truncate(listing["files"][biggest] // 2)

    train_worker(job(4), FolderSink(checkpoints, keep=4))
    (restart,) = read_manifest(tmp_path / "out").restarts
    assert restart.resumed_from_step == 2, "one checkpoint interval lost, not the run"
    assert "newer ones damaged: step_00000003" in restart.reason and biggest in restart.reason
    rows = (tmp_path / "out" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 3, 4], "step 3 was trained again, then step 4"
    assert resume_from(checkpoints).tag == "step_00000004"
    assert checkpoint_problem(checkpoints, "step_00000003") == "", "the retrained step 3 was saved whole again"
