"""The training loop without Ray, under the `deepspeed` launcher: two CPU processes (gloo), ZeRO-3
checkpoints in the stage folder (`checkpoints/step_XXXXXXXX`, `latest` written last, the last N
kept); a launch stopped mid-run resumes from the newest one when started again, here on one process
instead of two, through DeepSpeed's universal checkpoint; the stage manifest records the restart.
Real parts: DeepSpeed's launcher, DeepSpeed ZeRO-3 with CPU offload, ds_to_universal, the pretrain job."""

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
# A checkpoint every step: the first launch is stopped after its first, the second saves two more of
# which, with the one it resumed from, the last two are kept.
PRETRAIN = ["--module", "jobs.pretrain", "--run", "launch", "--set", "max_steps=3", "--set", "checkpoint_every=1",
            "--set", "keep_checkpoints=2", "--set", "log_every=1", "--set", "eval_every=3", "--set", "eval_batches=1",
            "--set", "micro_batch=2", "--set", "global_batch=4", "--set", "optim.name=adamw",
            "--set", "strategy.zero_stage=3", "--set", "strategy.offload_optimizer=cpu",
            "--set", "strategy.offload_params=cpu"]


def launch(env: dict, processes: int) -> subprocess.Popen:
    deepspeed = Path(sys.executable).with_name("deepspeed")
    # Its own session, so that stopping it stops the launcher and both ranks it started.
    return subprocess.Popen([str(deepspeed), "--num_gpus", str(processes), "--master_port", "29561", *PRETRAIN,
                             "--set", f"workers={processes}"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_stopped_launch_resumes_from_the_folder_checkpoint_on_another_process_count(tiny_tokens, tmp_path):
    run = tmp_path / "runs" / "launch"
    for stage in ("tokenizer", "tokenize"):
        shutil.copytree(tiny_tokens / stage, run / stage)
    env = {**os.environ, "SOLO_HOME": str(tmp_path), "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)

    checkpoints = run / "pretrain.partial" / "checkpoints"
    first = launch(env, processes=2)
    try:
        def checkpointed() -> bool:
            assert first.poll() is None, first.stdout.read()[-3000:]
            return (checkpoints / "latest").exists()

        wait_until(checkpointed, "a checkpoint written", timeout_s=300, every_s=0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    saved = (checkpoints / "latest").read_text()
    assert (checkpoints / saved / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    assert not (run / "pretrain").exists()  # stopped before its last step

    out, _ = launch(env, processes=1).communicate(timeout=300)
    resumed = int(saved.removeprefix("step_"))
    assert "written by 2 workers and this run has 1: converting it to DeepSpeed's universal" in out, out[-4000:]
    assert f"resumed from step {resumed}" in out, out[-4000:]
    assert "1 workers × micro-batch 2 × 2 accumulation = 4 sequences/step" in out
    manifest = json.loads((run / "pretrain" / "manifest.json").read_text())
    assert manifest["status"] == "complete", out[-4000:]
    assert manifest["metrics"]["step"] == 3
    assert [r["resumed_from_step"] for r in manifest["restarts"]] == [resumed]
    losses = [float(line.split(",")[1]) for line in (run / "pretrain" / "metrics.csv").read_text().splitlines()[1:]]
    assert all(0 < loss < 10 for loss in losses), losses
    # The last two checkpoints kept, `latest` on the last; the universal form, used, is gone.
    assert not (run / "pretrain" / "checkpoints" / "universal").exists()
    kept = sorted(p.name for p in (run / "pretrain" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000002", "step_00000003"]
    assert (run / "pretrain" / "checkpoints" / "latest").read_text() == "step_00000003"
    assert (run / "pretrain" / "model" / "model.safetensors").is_file()
