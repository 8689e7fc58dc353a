"""Batched greedy generation with a plain `transformers` model: left-padded prompts, one
`generate` call per batch, each reply cut at its first stop string.

Local on purpose: the serving engine is built for requests arriving over time; an evaluation
knows all its prompts at the start and wants them packed into as few passes as possible.
"""

from __future__ import annotations

from typing import Sequence

import torch

from solo.evals.likelihood import window


@torch.no_grad()
def greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
           stop: Sequence[str] = ()) -> list[str]:
    """The greedy continuation of each prompt, in order. A prompt longer than the window loses its
    start (the few-shot examples, never the question); at least half the window is left for the reply."""
    from solo.tokenizer import stop_token_ids

    new_tokens = min(max_new_tokens, window(model) // 2)
    budget = window(model) - new_tokens
    encoded = [([tokenizer.eos_token_id] + tokenizer(p, add_special_tokens=False)["input_ids"])[-budget:]
               for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    replies: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):   # left padding: every row's reply starts at column `width`
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None)
        for row, i in enumerate(chunk):
            replies[i] = cut(tokenizer.decode(out[row, width:], skip_special_tokens=True), stop)
    return replies


def cut(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (a batch runs on until its last row stops)."""
    ends = [text.find(s) for s in stop if s in text]
    return text[:min(ends)] if ends else text
