"""Bits per byte on held-out text.

Bits per byte divides the summed negative log-likelihood (in bits) by the UTF-8 bytes of the
text, so models with different tokenizers compare on the same scale.
"""

from __future__ import annotations

import math

import torch

from solo.evals.likelihood import filler_id


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
        ids = torch.full((len(chunk), width), filler_id(tokenizer), dtype=torch.long)
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
