"""A worker killed mid-run: Ray Train restarts the group from the last checkpoint with no person
involved, the stage manifest records the restart and the step it resumed from, and the run ends
at its last step. Real parts: a private local Ray, Ray Train, DeepSpeed ZeRO-3 with CPU offload."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from solo.config import REPO_ROOT
from tests.waits import wait_until

pytestmark = pytest.mark.integration
PRETRAIN = ["--run", "restart", "--set", "max_steps=8", "--set", "checkpoint_every=2", "--set", "log_every=1",
            "--set", "eval_every=8", "--set", "micro_batch=4", "--set", "global_batch=8"]


def job(name, args, env):
    return subprocess.Popen([sys.executable, "-m", f"jobs.{name}", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def descendants(root: int) -> list[int]:
    """The processes under `root` (this test's own job), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def train_worker_of(root: int) -> int | None:
    for pid in descendants(root):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                return pid
        except OSError:
            pass
    return None


def logged_steps(metrics_csv: Path) -> int:
    return len(metrics_csv.read_text().splitlines()) - 1 if metrics_csv.exists() else 0


def test_a_killed_worker_resumes_from_the_last_checkpoint(tiny_tokens, tmp_path):
    # The tokenizer and tokenize stages' folders, as `jobs.pipeline --until tokenize` leaves them.
    for stage in ("tokenizer", "tokenize"):
        shutil.copytree(tiny_tokens / stage, tmp_path / "runs" / "restart" / stage)
    env = {**os.environ, "SOLO_HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)

    partial = tmp_path / "runs" / "restart" / "pretrain.partial"
    training = job("pretrain", PRETRAIN, env)
    try:
        def past_step_4() -> bool:  # past the checkpoint of step 4
            assert training.poll() is None, training.stdout.read()[-3000:]
            return logged_steps(partial / "metrics.csv") >= 5

        wait_until(past_step_4, "training reaching step 5", timeout_s=600, every_s=0.5)
        worker = train_worker_of(training.pid)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        out, _ = training.communicate(timeout=900)
    finally:
        if training.poll() is None:
            training.kill()
    assert training.returncode == 0, out[-4000:]

    manifest = json.loads((tmp_path / "runs" / "restart" / "pretrain" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["metrics"]["step"] == 8
    restarts = manifest["restarts"]
    assert len(restarts) >= 1
    # From a checkpoint (every 2 steps), not from scratch: the newest one the controller had
    # registered when the worker died, which may lag the newest one written by a step.
    assert restarts[0]["resumed_from_step"] in (2, 4, 6)
    assert "resumed from step" in out
