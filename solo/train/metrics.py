"""What a training run reports as it goes: the console line, metrics.csv and TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLog:
    """A line per logged step on the console, and the same row in metrics.csv and TensorBoard."""

    def __init__(self, output: Path, enabled: bool):
        self.enabled = enabled
        self.file = self.tensorboard = None
        if not enabled:
            return
        path = output / "metrics.csv"
        self.file = path.open("a", newline="")
        self.header_written = path.stat().st_size > 0
        self.tensorboard = SummaryWriter(str(output / "tensorboard"))

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        eta = metrics["eta_s"]
        line = (f"step {metrics['step']:>6} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                f"{metrics['tokens_per_s']:,.0f} tok/s | ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        for key in ("val_loss", "val_bpb", "mfu", "gpu_peak_gb", "host_peak_gb"):
            if key in metrics:
                line += f" | {key} {metrics[key]}"
        print(line, flush=True)
        fields = ["step", "loss", "lr", "tokens_per_s", "tflops", "mfu", "val_loss", "val_bpb", "gpu_peak_gb",
                  "host_peak_gb", "eta_s"]
        writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        if not self.header_written:
            writer.writeheader()
            self.header_written = True
        writer.writerow(metrics)
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, metrics["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard:
            self.tensorboard.close()
