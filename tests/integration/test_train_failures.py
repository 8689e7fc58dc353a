"""A mistake inside a training worker stops the run at once, with one line and exit 2, where Ray Train would
retry it as a crash; a crash is retried from the last checkpoint, and every restart is recorded, one
that found no checkpoint and started over included. Faults are injected through solo.faults."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solo.config import REPO_ROOT
from solo.errors import SoloError
from solo.runtime import free_port
from solo.train.config import TrainConfig
from solo.train.job import TrainJob

pytestmark = pytest.mark.integration
PRETRAIN = ["--set", "max_steps=2", "--set", "log_every=1", "--set", "eval_every=2", "--set", "micro_batch=4",
            "--set", "global_batch=8", "--set", "max_failures=2", "--config", "configs/pretrain/shakespeare-cpu.yaml"]


def pretrain(run: str, tiny_tokens, home, fault: str) -> subprocess.CompletedProcess:
    for stage in ("tokenizer", "tokenize"):
        shutil.copytree(tiny_tokens / stage, home / "runs" / run / stage)
    env = {**os.environ, "SOLO_HOME": str(home), "SOLO_FAULTS": fault, "SOLO_FAULTS_DIR": str(home / run)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "jobs.pretrain", "--run", run, *PRETRAIN], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)


def manifest(home, run: str, folder: str) -> dict:
    return json.loads((home / "runs" / run / folder / "manifest.json").read_text())


def test_a_mistake_in_a_worker_is_not_retried_and_a_crash_is_retried_and_recorded(tiny_tokens, tmp_path):
    mistake = pretrain("mistake", tiny_tokens, tmp_path, "train.start=mistake")
    assert mistake.returncode == 2, mistake.stdout[-3000:] + mistake.stderr[-3000:]
    assert mistake.stderr.strip().splitlines()[-1] == "solo: a mistake injected at train.start"
    assert "restart 1" not in mistake.stdout + mistake.stderr, "a mistake is never retried"
    failed = manifest(tmp_path, "mistake", "pretrain.partial")
    assert failed["status"] == "failed" and failed["failure"] == "mistake" and failed["restarts"] == []

    crash = pretrain("crash", tiny_tokens, tmp_path, "train.start=crash")
    assert crash.returncode == 0, crash.stdout[-3000:] + crash.stderr[-3000:]
    assert "training: restart 1 of at most 2" in crash.stdout
    done = manifest(tmp_path, "crash", "pretrain")
    assert done["status"] == "complete" and done["metrics"]["step"] == 2
    (restart,) = done["restarts"]
    assert restart["resumed_from_step"] == 0 and "no checkpoint committed: started over" in restart["reason"]


def test_too_few_rows_for_one_step_is_found_before_any_worker_starts(tiny_tokens, tmp_path):
    config = TrainConfig(workers=2, micro_batch=4096, global_batch=8192)
    job = TrainJob(config, str(tiny_tokens / "tokenize" / "train"), None, str(tiny_tokens / "tokenizer"), str(tmp_path))
    with pytest.raises(SoloError, match=r"training rows cannot fill one step of 2 workers × micro_batch 4096"):
        job.check()


def test_a_private_ray_job_beside_another_cluster_reaches_only_its_own(tiny_tokens, tmp_path):
    """With another Ray up on the machine (`solo up`), a job that starts its own Ray, and every helper Ray Train
    starts in it, talk to that Ray alone (Ray's helpers otherwise attach to the latest cluster they find)."""
    other = {**os.environ, "SOLO_HOME": str(tmp_path / "other")}
    other.pop("RAY_ADDRESS", None)
    solo = [str(Path(sys.executable).with_name("solo"))]
    up = subprocess.run([*solo, "up", "--num-cpus", "1", "--port", str(free_port()), "--dashboard-port",
                         str(free_port())], env=other, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        done = pretrain("beside", tiny_tokens, tmp_path / "mine", "")
        status = subprocess.run([*solo, "status"], env=other, cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=120)
    finally:
        subprocess.run([*solo, "down"], env=other, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Found multiple active Ray instances" not in done.stdout + done.stderr
    jobs = status.stdout.split("entrypoint\n", 1)[-1].strip().splitlines()
    assert "nodes 1" in status.stdout and all(job.endswith("solo status") for job in jobs), status.stdout
