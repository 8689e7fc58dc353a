"""Log-likelihoods of continuations, batched.

A request is (context, continuation). Its tokens are the context's then the continuation's, cut
from the left to the model's window; the continuation's log-probability is read off one forward
pass. Requests whose model input is identical (MMLU's four one-letter answers to one question)
share that pass, and the rest are sorted by length so a batch holds little padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scored:
    logprob: float
    is_greedy: bool   # every continuation token was the model's top choice (lm-eval's second value)


def window(model) -> int:
    return int(model.config.max_position_embeddings)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The tokens of context and continuation, split where the context's tokens end.

    The pair is encoded whole and split, not encoded apart, so the continuation's tokens are the
    ones the model would see in running text; trailing spaces of the context move to the
    continuation, where BPE merges them into the next word. The document starts with the
    end-of-text token, as in training, so the first token has something to be predicted from.
    """
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    start = [tokenizer.eos_token_id]
    whole = start + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    head = start + tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[:len(head)], whole[len(head):]


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int) -> list[Scored]:
    """The log-probability of each continuation given its context, in the order of `requests`."""
    limit = window(model) + 1
    sequences, targets = [], []
    for context, continuation in requests:
        head, tail = encode_pair(tokenizer, context, continuation)
        if not tail:
            raise ValueError(f"empty continuation after {context[-40:]!r}: nothing to score")
        tokens = (head + tail)[-limit:]
        sequences.append(tuple(tokens[:-1]))
        targets.append(tokens[-len(tail):] if len(tail) < len(tokens) else tokens[1:])

    # One forward pass per distinct input, longest first (the largest batch is met at once, and
    # equal lengths sit together); only the rows each request needs are kept.
    by_input: dict[tuple[int, ...], list[int]] = {}
    for index, seq in enumerate(sequences):
        by_input.setdefault(seq, []).append(index)
    inputs = sorted(by_input, key=lambda s: (-len(s), s))
    results: list[Scored | None] = [None] * len(requests)
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i:i + batch_size]
        for seq, rows in zip(chunk, _forward(model, filler_id(tokenizer), chunk)):
            for index in by_input[seq]:
                results[index] = _score(rows, targets[index])
    return results


def _score(rows: torch.Tensor, target: list[int]) -> Scored:
    rows = rows[len(rows) - len(target):]          # the positions that predict `target`
    wanted = torch.tensor(target)
    picked = rows.gather(1, wanted[:, None]).squeeze(1)
    return Scored(float(picked.sum()), bool((rows.argmax(-1) == wanted).all()))


def filler_id(tokenizer) -> int:
    """The id that pads a batch's shorter rows: masked out and cut off, so any token does where a tokenizer has no
    pad token (Llama 3's and Mistral's have none)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def _forward(model, pad_id: int, batch: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Log-softmax rows for each sequence of a right-padded batch, cut to its own length."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return [logits[row, :len(seq)].log_softmax(-1) for row, seq in enumerate(batch)]


@torch.no_grad()
def text_loglikelihood(model, tokenizer, text: str) -> float:
    """The log-probability of a whole text, scored in windows that each see the token before them
    (lm-eval's `loglikelihood_rolling`, for perplexity tasks)."""
    ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    total, size = 0.0, window(model)
    for start in range(0, len(ids) - 1, size):
        chunk = torch.tensor([ids[start:start + size + 1]])
        logits = model(input_ids=chunk[:, :-1]).logits.float()
        total -= torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
    return total
