"""A training job: the config and the folders a worker reads and writes."""

from __future__ import annotations

from dataclasses import dataclass

from solo.train.config import TrainConfig


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; paths are in storage every worker sees."""

    config: TrainConfig
    train_dir: str           # token shards of the training split
    val_dir: str | None      # token shards of the validation split
    tokenizer_dir: str
    output_dir: str          # the stage's folder: model/, metrics.csv, tensorboard/, checkpoints
    init_model_dir: str | None = None  # start from these weights (fine-tuning) instead of from scratch
    val_bytes_per_token: float | None = None  # to turn validation loss into bits per byte
