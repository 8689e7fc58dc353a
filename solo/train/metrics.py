"""What a training run reports as it goes: the console line, metrics.csv and TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

# metrics.csv's columns. lr is AdamW's rate (every weight's under adamw; the embedding's, head's and norms'
# under muon), muon_lr Muon's; minutes is the run's clock, the one `max_minutes` reads.
FIELDS = ["step", "loss", "lr", "muon_lr", "minutes", "tokens_per_s", "tflops", "mfu", "val_loss", "val_bpb",
          "gpu_peak_gb", "host_peak_gb", "eta_s"]


class MetricsLog:
    """A line per logged step on the console, and the same row in metrics.csv and TensorBoard."""

    def __init__(self, output: Path, enabled: bool):
        self.enabled = enabled
        self.file = self.tensorboard = None
        if not enabled:
            return
        path = output / "metrics.csv"
        # A run resumed into a metrics.csv an older version wrote goes on under that file's header.
        existing = path.read_text().split("\n", 1)[0] if path.is_file() else ""
        self.fields = existing.split(",") if existing else FIELDS
        self.file = path.open("a", newline="")
        self.header_written = bool(existing)
        self.tensorboard = SummaryWriter(str(output / "tensorboard"))

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        eta = metrics["eta_s"]
        line = (f"step {metrics['step']:>6} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                f"{metrics['tokens_per_s']:,.0f} tok/s | {metrics['minutes']:.1f} min | "
                f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        for key in ("val_loss", "val_bpb", "mfu", "gpu_peak_gb", "host_peak_gb"):
            if key in metrics:
                line += f" | {key} {metrics[key]}"
        print(line, flush=True)
        writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
        if not self.header_written:
            writer.writeheader()
            self.header_written = True
        writer.writerow(metrics)
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if key in FIELDS and key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, metrics["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard:
            self.tensorboard.close()
