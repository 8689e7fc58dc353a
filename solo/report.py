"""The report card of a run: one markdown page, with plots, of what it cost and what it learnt.

    $SOLO_HOME/runs/<run>/report/report.md    written by `solo report RUN` and at the pipeline's end
    $SOLO_HOME/runs/<run>/report/*.png        loss, throughput and memory against step

Everything is read from the stage folders (manifest.json, metrics.csv, the data report, the
evaluation's metrics.json), so the card can be rewritten at any time, for a finished or a partial run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

from solo.evals.config import CostConfig, EvalConfig
from solo.pipeline import STAGES, migrate_run
from solo.store import Manifest, RunStore, read_manifest

TRAINING = {"pretrain": "pretrain", "finetune": "fine-tune"}  # the training stages, as the card names them


@dataclass(frozen=True)
class Reference:
    name: str
    mmlu: float | None
    gsm8k: float | None
    gpu_hours: float | None


# Published points to place a run beside, as the project's issue 8 states them (accuracy in %).
REFERENCES = (
    Reference("TinyLlama 1.1B", mmlu=31.2, gsm8k=12.4, gpu_hours=None),
    Reference("2.7B, one RTX 4090 for 1,200 h", mmlu=38.5, gsm8k=18.9, gpu_hours=1200.0),
)


# ---------------------------------------------------------------- reading the run


def read_curve(path: Path) -> list[dict[str, float]]:
    """metrics.csv as rows of numbers; a blank cell (no validation at that step) is left out."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def finished(run: RunStore, stage: str) -> Manifest | None:
    """A stage's manifest when it completed; a crashed or running one is not reported on."""
    manifest = read_manifest(run.stage_dir(stage))
    return manifest if manifest is not None and manifest.status == "complete" else None


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def task_results(eval_dir: Path) -> dict[str, dict]:
    return {p.parent.name: _json(p) for p in sorted(eval_dir.glob("*/metrics.json"))}


# ---------------------------------------------------------------- plots


def _plot(path: Path, title: str, curves: dict[str, list[dict[str, float]]], keys: dict[str, str], ylabel: str,
          ) -> Path | None:
    """One PNG of `keys` (column → label) against step, a line per stage; None when nothing to draw."""
    figure = Figure(figsize=(7, 3.6), dpi=110)
    axes = figure.add_subplot()
    drawn = False
    for stage, rows in curves.items():
        for key, label in keys.items():
            points = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
            if points:
                axes.plot(*zip(*points), marker="." if len(points) < 30 else None, label=f"{TRAINING[stage]} {label}")
                drawn = True
    if not drawn:
        return None
    axes.set(title=title, xlabel="step", ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_training(curves: dict[str, list[dict[str, float]]], folder: Path) -> list[Path]:
    plots = [
        _plot(folder / "loss.png", "Loss", curves, {"loss": "train", "val_loss": "validation"}, "nats per token"),
        _plot(folder / "val_bpb.png", "Validation bits per byte", curves, {"val_bpb": "val"}, "bits per byte"),
        _plot(folder / "throughput.png", "Throughput", curves, {"tokens_per_s": "tokens/s"}, "tokens per second"),
        _plot(folder / "mfu.png", "Model FLOPs utilisation", curves, {"mfu": "MFU"}, "fraction of peak"),
        _plot(folder / "memory.png", "Peak memory", curves, {"gpu_peak_gb": "GPU", "host_peak_gb": "host"}, "GB"),
    ]
    return [p for p in plots if p is not None]


# ---------------------------------------------------------------- sections


def _column(rows: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in rows if key in r]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, spec: str = ".3f", unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def stage_section(run: RunStore) -> list[str]:
    lines = ["## Stages", "", "| stage | status | time | restarts |", "| --- | --- | ---: | ---: |"]
    for stage in STAGES:
        manifest = finished(run, stage.name)
        if manifest is not None:
            lines.append(f"| {stage.name} | {manifest.status} | {_fmt(manifest.duration_s, '.1f', ' s')} | "
                         f"{len(manifest.restarts)} |")
    return lines + [""]


def data_section(report: dict) -> list[str]:
    if not report:
        return []
    dropped = ", ".join(f"{rule} {count:,}" for rule, count in sorted(report.get("dropped_by_reason", {}).items()))
    lines = ["## Data", "", f"Read {report['read']:,} documents, kept {report['kept']:,} "
             f"({report['kept_bytes'] / 1e6:.2f} MB); dropped: {dropped or 'none'}.", ""]
    domains = report.get("domains", {})
    if domains:
        lines += ["| domain | documents | MB |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {d['documents']:,} | {d['bytes'] / 1e6:.2f} |" for name, d in sorted(domains.items())]
        lines.append("")
    return lines


def training_section(curves: dict[str, list[dict[str, float]]], plots: list[Path]) -> list[str]:
    if not any(curves.values()):
        return []
    lines = ["## Training", "", "| stage | steps | final loss | final val loss | val bits/byte | tokens/s | MFU | "
             "GPU peak GB | host peak GB |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for stage, rows in curves.items():
        if not rows:
            continue
        last = {k: v for r in rows for k, v in r.items()}          # each column's latest value
        lines.append(f"| {TRAINING[stage]} | {int(last.get('step', 0))} | {_fmt(last.get('loss'))} | "
                     f"{_fmt(last.get('val_loss'))} | {_fmt(last.get('val_bpb'))} | "
                     f"{_fmt(_mean(_column(rows, 'tokens_per_s')), ',.0f')} | "
                     f"{_fmt(_mean(_column(rows, 'mfu')), '.2%')} | "
                     f"{_fmt(max(_column(rows, 'gpu_peak_gb'), default=None), '.2f')} | "
                     f"{_fmt(max(_column(rows, 'host_peak_gb'), default=None), '.2f')} |")
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return lines + [""]


def evaluation_section(summary: dict, tasks: dict[str, dict]) -> list[str]:
    if not summary and not tasks:
        return []
    lines = ["## Evaluation", ""]
    if "finetune_bits_per_byte" in summary:
        lines += ["| model | bits per byte | perplexity |", "| --- | ---: | ---: |"]
        lines += [f"| {stage} | {summary[f'{stage}_bits_per_byte']} | {summary[f'{stage}_perplexity']} |"
                  for stage in ("pretrain", "finetune") if f"{stage}_bits_per_byte" in summary]
        lines.append("")
    if tasks:
        lines += ["| task | shots | questions | accuracy % |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {r['settings']['shots']} | {r['n']} | {100 * r['accuracy']:.1f} |"
                  for name, r in tasks.items()]
        lines.append("")
    return lines


# ---------------------------------------------------------------- cost


def run_hours(run: RunStore) -> float:
    """Wall-clock hours of every finished stage: one machine, busy the whole time."""
    return sum((m.duration_s or 0.0) for m in (finished(run, s.name) for s in STAGES) if m is not None) / 3600


def cost_section(hours: float, on_gpu: bool, cost: CostConfig, tasks: dict[str, dict]) -> list[str]:
    unit = "GPU-hours" if on_gpu else "CPU-hours"

    def row(name: str, mmlu: float | None, gsm8k: float | None, h: float | None) -> str:
        kwh = None if h is None else h * cost.watts / 1000
        money = None if kwh is None else kwh * cost.price_per_kwh
        return (f"| {name} | {_fmt(mmlu, '.1f')} | {_fmt(gsm8k, '.1f')} | {_fmt(h, ',.2f')} | {_fmt(kwh, ',.2f')} | "
                f"{_fmt(money, ',.2f')} |")

    accuracy = {name: 100 * r["accuracy"] for name, r in tasks.items()}
    lines = ["## Cost", "", f"Wall-clock hours of the run's stages on one machine, at {cost.watts:g} W and "
             f"{cost.price_per_kwh:g} {cost.currency}/kWh (the references at the same draw and price).", "",
             f"| model | MMLU % | GSM8K % | {unit} | kWh | {cost.currency} |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             row("this run", accuracy.get("mmlu"), accuracy.get("gsm8k"), hours)]
    lines += [row(r.name, r.mmlu, r.gsm8k, r.gpu_hours) for r in REFERENCES]
    return lines + [""]


# ---------------------------------------------------------------- the card


def write_report(run: RunStore, config: EvalConfig | None = None) -> Path:
    """Write `<run>/report/report.md` and its plots; returns the markdown's path."""
    config = config or EvalConfig()
    migrate_run(run)  # a run from before the stages had one name each
    folder = run.root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    curves = {stage: read_curve(run.stage_dir(stage) / "metrics.csv") for stage in TRAINING}
    tasks = task_results(run.stage_dir("evaluate")) if finished(run, "evaluate") else {}
    summary = _json(run.stage_dir("evaluate") / "metrics.json") if finished(run, "evaluate") else {}
    on_gpu = any(r.get("gpu_peak_gb", 0) > 0 for rows in curves.values() for r in rows)
    lines = [f"# Report card: {run.root.name}", ""]
    lines += stage_section(run)
    lines += data_section(_json(run.stage_dir("data") / "report.json"))
    lines += training_section(curves, plot_training(curves, folder))
    lines += evaluation_section(summary, tasks)
    lines += cost_section(run_hours(run), on_gpu, config.cost, tasks)
    path = folder / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
