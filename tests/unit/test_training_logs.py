"""What a training run leaves to read: metrics.csv and TensorBoard event files, with the same scalars."""

from __future__ import annotations

import csv

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from solo.config import load_config
from solo.train.checkpoints import CheckpointSink
from solo.train.config import TrainConfig
from solo.train.job import TrainJob
from solo.train.loop import train_worker


def test_tensorboard_holds_every_logged_scalar_of_metrics_csv(tmp_path, tiny_tokens, gloo_group):
    config = load_config(TrainConfig, None, ["workers=1", "micro_batch=2", "global_batch=2", "max_steps=4",
                                             "log_every=2", "eval_every=2", "eval_batches=1", "optim.name=muon"])
    output = tmp_path / "pretrain"
    output.mkdir()
    train_worker(TrainJob(config, str(tiny_tokens / "tokenize" / "train"), str(tiny_tokens / "tokenize" / "val"),
                          str(tiny_tokens / "tokenizer"), str(output), val_bytes_per_token=3.0), CheckpointSink())

    with (output / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"]
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # Loss, both learning rates, throughput, memory, the clock and validation bits per byte (MFU, where the
    # device's peak is known: a GPU).
    for tag in ("loss", "lr", "muon_lr", "tokens_per_s", "tflops", "host_peak_gb", "minutes", "val_loss", "val_bpb"):
        assert tag in tags, tags
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [2, 4]
        assert [s.value for s in scalars] == pytest.approx([float(r[tag]) for r in rows], rel=1e-5)
