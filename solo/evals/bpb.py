"""Evaluation: bits per byte on held-out text, and sample answers through the chat template.

Bits per byte divides the summed negative log-likelihood (in bits) by the UTF-8 bytes of the
text, so models with different tokenizers compare on the same scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def load_model(model_dir: str | Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from solo.tokens.tokenizer import load

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    return model, load(model_dir)


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 8) -> dict:
    """Every token of every text is scored once, each window seeing the token before it."""
    windows: list[list[int]] = []
    total_bytes = 0
    for text in texts:
        total_bytes += len(text.encode())
        ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - 1, seq_len):
            windows.append(ids[start:start + seq_len + 1])
    nll, tokens = 0.0, 0
    windows.sort(key=len)  # similar lengths together: less padding
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, w in enumerate(chunk):
            ids[row, :len(w)] = torch.tensor(w)
            mask[row, :len(w)] = True
        logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits.float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        scored = mask[:, 1:]
        nll += losses[scored].sum().item()
        tokens += int(scored.sum())
    return {"bits_per_byte": nll / math.log(2) / max(total_bytes, 1), "perplexity": math.exp(nll / max(tokens, 1)),
            "tokens": tokens, "bytes": total_bytes}


def chat_answers(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to one-turn chats, rendered by the model's chat template and decoded by the
    serving engine: what `solo serve` would answer at temperature 0."""
    from solo.evals.generate import cpu_engine, greedy_ids
    from solo.tokens.tokenizer import render_chat

    prompts = [render_chat(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)[0]
               for q in questions]
    return [reply.strip() for reply in greedy_ids(cpu_engine(model, len(prompts)), tokenizer, prompts, max_new_tokens)]
