"""ZeRO-3 with parameters and optimizer state offloaded to NVMe (files under `nvme_path`, written and
read with libaio through DeepSpeed's async I/O op) trains on DeepSpeed's CPU accelerator. Real parts:
DeepSpeed's launcher, ZeRO-3, its async I/O op (`make ops` compiles it before the tests)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solo.config import REPO_ROOT

pytestmark = pytest.mark.integration


def test_zero3_trains_with_params_and_optimizer_state_on_nvme(tiny_tokens, tmp_path):
    run = tmp_path / "runs" / "nvme"
    for stage in ("tokenizer", "tokenize"):
        shutil.copytree(tiny_tokens / stage, run / stage)
    swap = tmp_path / "nvme"
    swap.mkdir()
    env = {**os.environ, "SOLO_HOME": str(tmp_path), "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    deepspeed = Path(sys.executable).with_name("deepspeed")
    done = subprocess.run(
        [str(deepspeed), "--num_gpus", "1", "--master_port", "29562", "--module", "jobs.pretrain", "--run", "nvme",
         "--set", "workers=1", "--set", "max_steps=2", "--set", "micro_batch=2", "--set", "global_batch=2",
         "--set", "log_every=1", "--set", "eval_batches=1", "--set", "optim.name=adamw",
         "--set", "strategy.zero_stage=3", "--set", "strategy.offload_optimizer=nvme",
         "--set", "strategy.offload_params=nvme", "--set", f"strategy.nvme_path={swap}"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "offload optimizer=nvme params=nvme" in out

    manifest = json.loads((run / "pretrain" / "manifest.json").read_text())
    assert math.isfinite(manifest["metrics"]["loss"]) and manifest["metrics"]["loss"] > 0
    # DeepSpeed's swap files: the fp32 master weights and Adam's two moments. (It swaps only tensors of
    # 1 MiB or more, so the demo model's parameter partitions, all smaller, stay in host memory.)
    files = list((swap / "zero_stage_3" / "optimizer" / "rank0").glob("*.tensor.swp"))
    kinds = {f.name.split("-")[0] if "-" in f.name else "master weights" for f in files}
    assert kinds == {"master weights", "exp_avg", "exp_avg_sq"}, sorted(swap.rglob("*"))[:20]
    assert all(p.stat().st_size > 0 for p in swap.rglob("*.swp"))
