"""Muon (`optim.name: muon`) under Ray Train with two CPU workers at ZeRO-2, where DeepSpeed shards its state: it
trains, and its state (Muon's momentum, AdamW's moments for the rest) checkpoints and resumes exactly. (ZeRO-0,
the default recipe's plan on the CPU, trains in the e2e demo; one Ray run less keeps CI within its minutes.)"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solo.config import REPO_ROOT

pytestmark = pytest.mark.integration


def logged(metrics_csv: Path) -> list[tuple[int, float]]:
    with metrics_csv.open() as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.parametrize("zero_stage", [2])
def test_muon_trains_on_two_workers_and_resumes_its_state_exactly(zero_stage, tiny_tokens, tmp_path):
    """Checkpoints at steps 2 and 4; a worker is killed as step 4's is written, so the driver restarts the
    group from step 2's. Step 3 trained again gives the same loss (the weights came back); step 4 too, which
    only holds if step 3's update, made from Muon's and Adam's state saved at step 2, is the same."""
    run = tmp_path / "runs" / "muon"
    for stage in ("tokenizer", "tokenize"):
        shutil.copytree(tiny_tokens / stage, run / stage)
    env = {**os.environ, "SOLO_HOME": str(tmp_path), "SOLO_FAULTS": "train.checkpoint.written=kill@2",
           "SOLO_FAULTS_DIR": str(tmp_path / "faults")}
    env.pop("RAY_ADDRESS", None)
    sets = ["optim.name=muon", f"strategy.zero_stage={zero_stage}", "workers=2", "micro_batch=2", "global_batch=4",
            "max_steps=5", "checkpoint_every=2", "log_every=1", "eval_every=1000", "optim.warmup_steps=1"]
    done = subprocess.run([sys.executable, "-m", "jobs.pretrain", "--run", "muon", "--config",
                           "configs/pretrain/shakespeare-cpu.yaml", *[a for s in sets for a in ("--set", s)]],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert f"ZeRO-{zero_stage}" in out and ("gradient clipping off" in out) == (zero_stage == 2)
    assert "training: restart 1 of at most" in out and "resumed from step 2" in out
    stage = run / "pretrain"
    losses = logged(stage / "metrics.csv")
    assert [step for step, _ in losses] == [1, 2, 3, 4, 3, 4, 5]
    assert losses[2] == losses[4] and losses[3] == losses[5], losses
    assert losses[-1][1] < losses[0][1], f"it learns: {losses}"
    (restart,) = json.loads((stage / "manifest.json").read_text())["restarts"]
    assert restart["resumed_from_step"] == 2
