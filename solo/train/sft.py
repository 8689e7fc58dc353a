"""Instruction-tuning rows: conversations rendered with the tokenizer's own chat template.

The loss falls only on assistant tokens (their content and the end-of-turn token that closes
each answer), as the template's `{% generation %}` marks them; every other label is -100.

Packing (`pack: true`): conversations are laid end to end in a row, and each one's position ids
restart at 0. The model gets `position_ids`, no attention mask and `use_cache=False` (with a KV
cache transformers skips the detection), and transformers 5 reads every restart as the start of
a new sequence (`masking_utils.find_packed_sequence_indices`): the causal
mask becomes block-diagonal (sdpa and eager attention, both tested; flash attention reads the
same restarts as sequence boundaries), so a token attends only to earlier tokens of its own
conversation. tests/unit/test_sft.py holds it to that: a
conversation's logits packed after another equal its logits alone. The padding that ends a row
is one more block of its own, with no loss. With `pack: false` each conversation gets a row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from solo.data import corpus
from solo.errors import SoloError
from solo.tokens.shards import IGNORE, ShardWriter, is_validation, token_dtype
from solo.tokens.tokenizer import render_chat
from solo.train.chat_formats import Conversation, SkipCounts, read_conversations

if TYPE_CHECKING:
    from solo.train.config import FinetuneConfig


def conversations(source: str, layout: str, max_examples: int | None, skipped: SkipCounts) -> Iterator[Conversation]:
    """The embedded pairs, or the conversations of a file (malformed records tallied in `skipped`)."""
    if source == "embedded":
        for pair in corpus.instruction_pairs(max_examples):
            yield Conversation(pair["id"], pair["messages"])
        return
    yield from read_conversations(source, layout, max_examples, skipped)


def masked_tokens(tokenizer, messages: list[dict], seq_len: int,
                  tools: list[dict] | None = None) -> tuple[list[int], list[int]] | None:
    """(ids, labels) of one conversation cut to seq_len; None when no assistant token survives the cut."""
    ids, mask = render_chat(tokenizer, messages, tools)
    ids, mask = ids[:seq_len], mask[:seq_len]
    if not any(mask):
        return None
    return ids, [i if m else IGNORE for i, m in zip(ids, mask)]


class RowPacker:
    """Fills rows of seq_len with whole conversations (one per row unless `pack`), positions restarting at 0."""

    def __init__(self, writer: ShardWriter, pad_id: int, pack: bool):
        self.writer, self.pad_id, self.pack = writer, pad_id, pack
        self.ids: list[int] = []
        self.labels: list[int] = []
        self.positions: list[int] = []

    def add(self, ids: list[int], labels: list[int]) -> None:
        if self.ids and (not self.pack or len(self.ids) + len(ids) > self.writer.seq_len):
            self.flush()
        self.ids += ids
        self.labels += labels
        self.positions += range(len(ids))
        self.writer.documents += 1

    def flush(self) -> None:
        if not self.ids:
            return
        pad = self.writer.seq_len - len(self.ids)
        self.writer.add(np.asarray(self.ids + [self.pad_id] * pad), np.asarray(self.labels + [IGNORE] * pad),
                        np.asarray(self.positions + list(range(pad))))
        self.ids, self.labels, self.positions = [], [], []

    def close(self) -> dict:
        self.flush()
        return self.writer.close()


def build_sft_rows(tokenizer, config: FinetuneConfig, output: Path, val_fraction: float = 0.05) -> dict:
    """Rows for training and validation under `output/{train,val}`, and `output/report.json` with the
    records skipped by reason. Returns the stage's data metrics."""
    dtype = token_dtype(len(tokenizer))
    packers = {split: RowPacker(ShardWriter(output / split, config.seq_len, dtype, rows_per_shard=8192,
                                            with_labels=True, with_positions=True), tokenizer.pad_token_id, config.pack)
               for split in ("train", "val")}
    skipped = SkipCounts()
    tokens = learned = 0
    for conversation in conversations(config.data, config.format, config.max_examples, skipped):
        try:
            row = masked_tokens(tokenizer, conversation.messages, config.seq_len, conversation.tools)
        except Exception:  # the template rejects it (a content type it cannot print, for one)
            skipped.add("chat template cannot render it")
            continue
        if row is None:
            skipped.add(f"no assistant token within seq_len {config.seq_len}")
            continue
        tokens += len(row[0])
        learned += sum(label != IGNORE for label in row[1])
        packers["val" if is_validation(conversation.id, val_fraction) else "train"].add(*row)
    indexes = {split: packer.close() for split, packer in packers.items()}
    report = {"conversations": indexes["train"]["documents"] + indexes["val"]["documents"],
              "skipped": skipped.total, "skipped_by_reason": dict(skipped.reasons.most_common()),
              "train_rows": indexes["train"]["rows"], "val_rows": indexes["val"]["rows"],
              "tokens": tokens, "assistant_tokens": learned,
              "fill": round(tokens / max(1, config.seq_len * (indexes["train"]["rows"] + indexes["val"]["rows"])), 4)}
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if indexes["train"]["rows"] == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in skipped.reasons.most_common(3)) or "no records"
        raise SoloError(f"no usable conversations in {config.data} ({reasons})")
    metrics = {k: v for k, v in report.items() if k != "skipped_by_reason"}
    metrics.update({f"skipped: {reason}": n for reason, n in skipped.reasons.items()})
    return metrics
