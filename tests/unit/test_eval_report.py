"""The report card, from a run folder laid out as the pipeline leaves it."""

import csv
import json
import time
from pathlib import Path

import pytest

from solo.evals.config import CostConfig, EvalConfig
from solo.report import write_report
from solo.store import Manifest, RunStore, write_manifest

FIELDS = ["step", "loss", "lr", "tokens_per_s", "tflops", "mfu", "val_loss", "val_bpb", "gpu_peak_gb", "host_peak_gb",
          "eta_s"]


def _stage(run: RunStore, folder: str, seconds: float, metrics: dict | None = None) -> Path:
    path = run.stage_dir(folder)
    path.mkdir(parents=True)
    now = time.time()
    write_manifest(path, Manifest(stage=folder, status="complete", config_hash="x", started_at=now - seconds,
                                  finished_at=now, duration_s=seconds, metrics=metrics or {}))
    return path


def _curve(path: Path, rows: list[dict]) -> None:
    with (path / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def run(tmp_path) -> RunStore:
    run = RunStore(tmp_path / "runs" / "card")
    data = _stage(run, "data", 360)
    (data / "report.json").write_text(json.dumps({"read": 1200, "kept": 1000, "kept_bytes": 5_000_000,
                                                  "dropped_by_reason": {"too_short": 150, "duplicate": 50},
                                                  "domains": {"web": {"documents": 1000, "bytes": 5_000_000}}}))
    for folder, seconds in (("tokenizer", 180), ("tokenize", 180)):
        _stage(run, folder, seconds)
    for folder, seconds, first_loss in (("pretrain", 5400, 8.0), ("finetune", 1440, 3.0)):
        rows = [{"step": s, "loss": first_loss - s / 100, "lr": 1e-3, "tokens_per_s": 1000 + s, "tflops": 1.0,
                 "mfu": 0.25, "gpu_peak_gb": "", "host_peak_gb": 2.0 + s / 100, "eta_s": 0,
                 **({"val_loss": first_loss - s / 90, "val_bpb": 1.5 - s / 1000} if s % 20 == 0 else {})}
                for s in range(10, 101, 10)]
        _curve(_stage(run, folder, seconds), rows)
    evaluation = _stage(run, "evaluate", 36)
    (evaluation / "metrics.json").write_text(json.dumps({"pretrain_bits_per_byte": 1.9, "pretrain_perplexity": 40.1,
                                                        "finetune_bits_per_byte": 1.8, "finetune_perplexity": 35.2}))
    for name, accuracy in (("mmlu", 0.25), ("gsm8k", 0.02)):
        (evaluation / name).mkdir()
        (evaluation / name / "metrics.json").write_text(json.dumps(
            {"task": name, "accuracy": accuracy, "n": 100, "settings": {"shots": 5}}))
    return run


def test_report_card_has_every_section_and_plot(run):
    path = write_report(run, EvalConfig(cost=CostConfig(watts=500, price_per_kwh=0.2, currency="EUR")))
    assert path == run.root / "report" / "report.md"
    text = path.read_text()
    for heading in ("## Stages", "## Data", "## Training", "## Evaluation", "## Cost"):
        assert heading in text
    assert "kept 1,000" in text and "too_short 150" in text
    assert "| pretrain | 1.9 | 40.1 |" in text and "| mmlu | 5 | 100 | 25.0 |" in text
    # 7,596 s of stages = 2.11 CPU-hours (no GPU memory logged) → 1.055 kWh at 500 W → 0.211 EUR.
    assert "| this run | 25.0 | 2.0 | 2.11 | 1.05 | 0.21 |" in text and "CPU-hours" in text
    assert "| TinyLlama 1.1B | 31.2 | 12.4 | — | — | — |" in text
    assert "| 2.7B, one RTX 4090 for 1,200 h | 38.5 | 18.9 | 1,200.00 | 600.00 | 120.00 |" in text
    for plot in ("loss", "val_bpb", "throughput", "mfu", "memory"):
        png = run.root / "report" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({plot}.png)" in text
    # The last logged step's numbers, and the peak memory.
    assert "| pretrain | 100 | 7.000 | 6.889 | 1.400 | 1,055 | 25.00% | — | 3.00 |" in text


def test_a_partial_run_still_gets_a_card(tmp_path):
    run = RunStore(tmp_path / "runs" / "early")
    _stage(run, "data", 60)
    text = write_report(run).read_text()
    assert "## Stages" in text and "| data | complete | 60.0 s | 0 |" in text
    assert "## Training" not in text and "## Evaluation" not in text
    assert "| this run | — | — | 0.02 |" in text
