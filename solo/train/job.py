"""A training job: the config and the folders a worker reads and writes, checked before any worker starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from solo.errors import SoloError
from solo.tokens.tokenizer import load
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
    started_at: float | None = None  # when the stage (or this attempt) started: max_minutes' clock; None: now

    def check(self) -> None:
        """What a worker would otherwise find out only after the worker group started, and Ray Train would
        take for a crash and retry `max_failures` times: checked here, once, on the driver."""
        index = Path(self.train_dir) / "index.json"
        if not index.is_file():
            raise SoloError(f"no training rows at {self.train_dir} (no index.json): run the tokenize stage first")
        shards = json.loads(index.read_text())
        rows = shards["rows"]
        config = self.config
        if self.init_model_dir is None and config.seq_len is not None and shards["seq_len"] != config.seq_len:
            raise SoloError(f"this config is made for rows of {config.seq_len} tokens (seq_len) but the tokenize stage "
                            f"made rows of {shards['seq_len']}: run it again with --set seq_len={config.seq_len} "
                            f"(pipeline: tokenize.seq_len), or set seq_len: null to train on these")
        if self.init_model_dir is None and config.vocab_size is not None and Path(self.tokenizer_dir).is_dir():
            vocab = len(load(self.tokenizer_dir))
            if vocab != config.vocab_size:
                raise SoloError(f"this config is made for a tokenizer of {config.vocab_size:,} tokens (vocab_size) but "
                                f"the run's has {vocab:,}: train one with --set vocab_size={config.vocab_size} "
                                f"(pipeline: tokenizer.vocab_size), or set vocab_size: null to train with this one")
        per_step = self.config.workers * self.config.micro_batch
        if rows < per_step:
            raise SoloError(f"{rows} training rows cannot fill one step of {self.config.workers} workers × "
                            f"micro_batch {self.config.micro_batch}: add data or lower the batch")
        for what, folder in (("tokenizer", self.tokenizer_dir), ("model to start from", self.init_model_dir)):
            if folder is not None and not Path(folder).is_dir():
                raise SoloError(f"the {what} is not there: {folder}")
