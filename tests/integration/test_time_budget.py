"""`max_minutes`: a run stops at its wall-clock budget with its learning rate annealed, and a run killed on
the way goes on, when submitted again, with what its checkpoint had left of the budget."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solo.config import REPO_ROOT, load_config
from solo.train.config import TrainConfig
from solo.train.schedule import lr_factor

pytestmark = pytest.mark.integration
BUDGET_MINUTES = 0.3
PEAK_LR = 3e-3


def rows(metrics_csv: Path) -> list[dict]:
    with metrics_csv.open() as f:
        return list(csv.DictReader(f))


def assert_stopped_by_the_clock_annealed(logged: list[dict], config: TrainConfig) -> None:
    """Logged every step: the run stopped at the first step that ended past the budget, and each step's
    learning rate is the schedule's at the share of the budget spent before it: somewhere between the
    minutes logged by the step before it and by itself."""
    budget, peak = config.max_minutes, config.optim.lr
    minutes = [float(r["minutes"]) for r in logged]
    rounding = 0.0005  # metrics.csv keeps minutes to 3 decimals
    assert minutes[-2] - rounding < budget <= minutes[-1] + rounding, minutes[-3:]
    for before, row in zip(logged, logged[1:]):
        if int(row["step"]) == int(before["step"]) + 1:  # not across a restart, whose clock resumed elsewhere
            bounds = [peak * lr_factor(int(before["step"]), (float(at) + sign * rounding) / budget, config.optim)
                      for at, sign in ((before["minutes"], -1), (row["minutes"], 1))]
            assert min(bounds) * (1 - 1e-4) <= float(row["lr"]) <= max(bounds) * (1 + 1e-4), (row, bounds)
    assert float(logged[-1]["lr"]) < 0.5 * peak, "the last steps ran at a decayed rate"


def launcher(args: list[str], home: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOLO_HOME": str(home), "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    if fault:
        env.update({"SOLO_FAULTS": fault, "SOLO_FAULTS_DIR": str(home / "faults")})
    command = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1", "--master_port", "29571",
               "--module", "jobs.pretrain", "--set", "workers=1", *args]
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_a_killed_run_resumes_with_what_its_checkpoint_had_spent_and_stops_on_time_annealed(tiny_tokens, tmp_path):
    run = tmp_path / "runs" / "budget"
    for stage in ("tokenizer", "tokenize"):
        shutil.copytree(tiny_tokens / stage, run / stage)
    overrides = ["workers=1", "max_steps=null", f"max_minutes={BUDGET_MINUTES}", f"optim.lr={PEAK_LR}",
                 "optim.warmup_steps=2", "micro_batch=2", "global_batch=2", "log_every=1", "eval_every=1000000",
                 "checkpoint_every=20"]
    args = ["--run", "budget", "--config", "configs/pretrain/shakespeare-cpu.yaml",
            *[arg for o in overrides for arg in ("--set", o)]]
    config = load_config(TrainConfig, REPO_ROOT / "configs/pretrain/shakespeare-cpu.yaml", overrides)
    assert config.max_steps is None and config.max_minutes == BUDGET_MINUTES

    first = launcher(args, tmp_path, fault="train.checkpoint.written=kill@2")
    assert "solo.faults: kill at train.checkpoint.written" in first.stdout + first.stderr, first.stderr[-3000:]
    partial = run / "pretrain.partial"  # a stage's folder until it completes
    spent_at_checkpoint = float(next(r for r in rows(partial / "metrics.csv") if r["step"] == "20")["minutes"])

    second = launcher(args, tmp_path)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert f"of {BUDGET_MINUTES} minutes spent" in out and "resumed from step 20" in out
    stage = run / "pretrain"
    logged = rows(stage / "metrics.csv")
    resumed = next(i for i, r in enumerate(logged) if i and int(r["step"]) <= int(logged[i - 1]["step"]))
    assert logged[resumed]["step"] == "21"
    # The clock went on from what the checkpoint had spent: the budget did not start again.
    assert float(logged[resumed]["minutes"]) > spent_at_checkpoint
    assert_stopped_by_the_clock_annealed(logged, config)
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"]["step"] == int(logged[-1]["step"])


def test_the_pipeline_on_a_users_file_stops_pretraining_at_max_minutes(tmp_path):
    """`python -m jobs.pipeline --input FILE --set pretrain.max_minutes=…` (300 FineWeb documents), through
    pretraining."""
    corpus = REPO_ROOT.parent / "shared" / "data" / "webtext" / "fineweb_first300.json"
    env = {**os.environ, "SOLO_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    sets = ["run=notes", "tokenizer.vocab_size=512", "tokenize.seq_len=64", "pretrain.max_minutes=0.5",
            f"pretrain.optim.lr={PEAK_LR}", "pretrain.optim.warmup_steps=2", "pretrain.micro_batch=2",
            "pretrain.global_batch=4", "pretrain.log_every=1", "pretrain.eval_every=1000000"]
    done = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--input", str(corpus), "--until", "pretrain",
                           *[arg for s in sets for arg in ("--set", s)]],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    config = load_config(TrainConfig, None, [s.removeprefix("pretrain.") for s in sets if s.startswith("pretrain.")])
    assert_stopped_by_the_clock_annealed(rows(tmp_path / "home" / "runs" / "notes" / "pretrain" / "metrics.csv"),
                                         config)
