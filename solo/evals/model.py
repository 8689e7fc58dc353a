"""A model folder loaded for evaluation, in fp32 on the CPU, with its tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from solo.tokens.tokenizer import load


def load_model(model_dir: str | Path):
    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    return model, load(model_dir)
