"""Evaluation of other families' checkpoints (tests/families.py: Qwen2, Llama, Mistral, saved in bf16/fp16, the
last two without a pad token): loaded in fp32, scored in bits per byte and log-likelihood, and answering."""

from __future__ import annotations

import math

import torch

from solo.evals.bpb import bits_per_byte
from solo.evals.generate import chat_answers
from solo.evals.likelihood import loglikelihoods
from solo.evals.model import load_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Tokens, bytes and bits: 3.14 is close to pi."]


def test_each_family_evaluates_in_fp32(family):
    model, tokenizer = load_model(family.folder)
    assert next(model.parameters()).dtype == torch.float32
    assert math.isfinite(bits_per_byte(model, tokenizer, TEXTS, seq_len=32, batch_size=2)["bits_per_byte"])
    # Two continuations of different lengths in one batch: the shorter is padded, pad token or not.
    scored = loglikelihoods(model, tokenizer, [("Question: 2+2? Answer:", " 4"),
                                               ("Question: 2+2? Answer:", " four, as everyone knows")], 2)
    assert len(scored) == 2 and all(math.isfinite(s.logprob) for s in scored)
    [answer] = chat_answers(model, tokenizer, ["What is 2+2?"], 4)
    assert isinstance(answer, str)
