"""`python -m jobs.export` on a run: the Hugging Face folder with its card, and with `formats: [hf, gguf]` the GGUF
file and Modelfile beside it; run again it is skipped, and a changed quant runs it again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader

from solo.config import REPO_ROOT
from solo.store import Manifest, RunStore, read_manifest, write_manifest

pytestmark = pytest.mark.integration


def job(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOLO_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "jobs.export", "--run", "mine", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_export_job_writes_gguf_and_reruns_when_its_settings_change(tiny_model_dir, tmp_path):
    run = RunStore(tmp_path / "home" / "runs" / "mine")
    shutil.copytree(tiny_model_dir, run.stage_dir("finetune") / "model")
    for stage, metrics in (("finetune", {"step": 20, "loss": 2.5, "tokens_per_s": 800.0}), ("evaluate", {})):
        run.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        write_manifest(run.stage_dir(stage), Manifest(stage=stage, status="complete", config_hash=stage,
                                                      metrics=metrics, started_at=0, duration_s=30.0))
    (run.stage_dir("evaluate") / "metrics.json").write_text(json.dumps({"finetune_bits_per_byte": 2.25}))

    done = job(tmp_path, "--set", "formats=[hf,gguf]")
    assert done.returncode == 0, done.stderr[-3000:]
    export = run.stage_dir("export")
    assert sorted(p.name for p in export.iterdir()) == ["Modelfile", "manifest.json", "mine", "mine.gguf"]
    assert "FROM ./mine.gguf" in (export / "Modelfile").read_text()
    card = (export / "mine" / "README.md").read_text()
    assert "| fine-tuning | 20 |" in card and "| 2.25 |" in card
    assert GGUFReader(export / "mine.gguf").fields["general.file_type"].contents() == 1  # f16, the default
    first = read_manifest(export)

    again = job(tmp_path, "--set", "formats=[hf,gguf]")
    assert again.returncode == 0 and "up to date" in again.stdout
    assert read_manifest(export) == first

    quantized = job(tmp_path, "--set", "formats=[hf,gguf]", "--set", "quant=q8_0")
    assert quantized.returncode == 0, quantized.stderr[-3000:]
    assert read_manifest(export).config_hash != first.config_hash
    assert GGUFReader(export / "mine.gguf").fields["general.file_type"].contents() == 7
