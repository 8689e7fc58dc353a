"""Instruction-tuning data: conversations rendered with the tokenizer's own chat template.

The loss falls only on assistant tokens (their content and the end-of-turn token that closes
each answer), as the template's `{% generation %}` marks them; every other label is -100.
Each conversation is one row, padded at the end: it attends to nothing but itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from solo import corpus
from solo.errors import SoloError
from solo.tokenizer import render_chat
from solo.tokens import IGNORE, ShardWriter, is_validation, token_dtype


def conversations(source: str, max_examples: int | None) -> Iterator[dict]:
    """`{id, messages}` records from the embedded pairs or a jsonl of OpenAI-style messages."""
    if source == "embedded":
        yield from corpus.instruction_pairs(max_examples)
        return
    path = Path(source).expanduser()
    if not path.is_file():
        raise SoloError(f"finetune data {source} does not exist: pass a jsonl of {{\"messages\": [...]}} or `embedded`")
    count = 0
    with path.open() as lines:
        for number, line in enumerate(lines):
            if max_examples is not None and count >= max_examples:
                return
            try:
                record = json.loads(line)
                messages = record["messages"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a malformed record is skipped; build_sft_rows counts it
            yield {"id": str(record.get("id", f"{path.name}:{number}")), "messages": messages}
            count += 1


def masked_row(tokenizer, messages: list[dict], seq_len: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(input_ids, labels) padded or cut to seq_len; None when no assistant token survives the cut."""
    ids, mask = render_chat(tokenizer, messages)
    ids, mask = ids[:seq_len], mask[:seq_len]
    if not any(mask):
        return None
    labels = [i if m else IGNORE for i, m in zip(ids, mask)]
    pad = seq_len - len(ids)
    return (np.asarray(ids + [tokenizer.pad_token_id] * pad), np.asarray(labels + [IGNORE] * pad))


def build_sft_rows(tokenizer, source: str, max_examples: int | None, seq_len: int, output: Path,
                   val_fraction: float = 0.05) -> dict:
    dtype = token_dtype(len(tokenizer))
    writers = {split: ShardWriter(output / split, seq_len, dtype, rows_per_shard=8192, with_labels=True)
               for split in ("train", "val")}
    skipped = 0
    for record in conversations(source, max_examples):
        try:
            row = masked_row(tokenizer, record["messages"], seq_len)
        except Exception:  # a conversation the template cannot render (a bad role, a bad type)
            row = None
        if row is None:
            skipped += 1
            continue
        writer = writers["val" if is_validation(record["id"], val_fraction) else "train"]
        writer.add(*row)
        writer.documents += 1
    indexes = {split: w.close() for split, w in writers.items()}
    if indexes["train"]["rows"] == 0:
        raise SoloError(f"no usable conversations in {source}")
    return {"train_rows": indexes["train"]["rows"], "val_rows": indexes["val"]["rows"], "skipped": skipped}
