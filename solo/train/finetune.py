"""The finetune stage: conversations into masked rows (solo.train.sft), then the training loop on them from
a base model; LoRA and QLoRA adapters are registered by name for serving."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from solo.store import register_adapter
from solo.tokens.tokenizer import load
from solo.train.adapters import check_target_modules
from solo.train.config import FinetuneConfig
from solo.train.job import TrainJob
from solo.train.launch import run_training
from solo.train.sft import build_sft_rows


def finetune(config: FinetuneConfig, base: Path, tokenizer_dir: Path, output: Path, adapter_name: str,
             log: Callable[[str], None] = print, started_at: float | None = None) -> dict:
    """Fine-tune the Hugging Face model in `base` into `output`; `adapter_name` names its adapters unless the
    config does. `started_at`: when the stage began, where a `max_minutes` budget starts (default: now)."""
    started_at = started_at or time.time()
    rows = build_sft_rows(load(tokenizer_dir), config, output / "rows", model_dir=base)
    log(f"finetune ({config.method}): {rows['conversations']:,} conversations in {rows['train_rows']:,} rows to "
        f"learn from, {rows['val_rows']:,} held out, {rows['skipped']:,} records skipped (rows/report.json)")
    if config.trains_adapters():
        targets = check_target_modules(base, config)
        found = "" if config.lora.target_modules else " (every Linear of its decoder layers)"
        log(f"finetune: {config.method} adapters on {', '.join(targets)}{found}")
    job = TrainJob(config=config, train_dir=str(output / "rows" / "train"), val_dir=str(output / "rows" / "val"),
                   tokenizer_dir=str(tokenizer_dir), output_dir=str(output), init_model_dir=str(base),
                   started_at=started_at)
    metrics = {**run_training(job), **rows}
    if config.trains_adapters():
        name = config.adapter_name or adapter_name
        registered = register_adapter(name, output / "adapter", base_model=str(base), method=config.method,
                                      metrics=metrics)
        log(f"finetune: adapter {name!r} registered at {registered}")
        metrics["adapter"] = name
    return metrics
