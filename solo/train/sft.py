"""Instruction-tuning rows: conversations rendered with the model's own chat template.

The loss falls only on assistant tokens (their content and the end-of-turn token that closes each answer), found
by solo.train.masking for any template; every other label is -100. A conversation longer than `seq_len` is
skipped and counted under that reason, never cut: a cut one would teach answers that stop mid-sentence.

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
from solo.train.chat_formats import Conversation, SkipCounts, read_conversations
from solo.train.masking import AssistantMasker

if TYPE_CHECKING:
    from solo.train.config import FinetuneConfig


def conversations(source: str, layout: str, max_examples: int | None, skipped: SkipCounts,
                  split: str | None = None) -> Iterator[Conversation]:
    """The embedded pairs, or the conversations of a file, folder or dataset (`split`: the one to read of a
    DatasetDict), malformed records tallied in `skipped`."""
    if source == "embedded":
        for pair in corpus.instruction_pairs(max_examples):
            yield Conversation(pair["id"], pair["messages"])
        return
    yield from read_conversations(source, layout, max_examples, skipped, split)


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


def padding_id(tokenizer) -> int:
    """The id that fills the end of a row. Its labels are IGNORE and its positions a block of their own, so any id
    serves where the tokenizer names no pad token (Llama 3's and Mistral's do not): the eos, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def build_sft_rows(tokenizer, config: FinetuneConfig, output: Path, val_fraction: float = 0.05,
                   model_dir: Path | None = None) -> dict:
    """Rows for training and validation under `output/{train,val}`, and `output/report.json` with the
    records skipped by reason. `model_dir`: the model the tokenizer belongs to (its generation config names
    the end-of-turn tokens). Returns the stage's data metrics."""
    masker = AssistantMasker.for_model(tokenizer, config.loss_on, model_dir)
    dtype = token_dtype(len(tokenizer))
    packers = {split: RowPacker(ShardWriter(output / split, config.seq_len, dtype, rows_per_shard=8192,
                                            with_labels=True, with_positions=True), padding_id(tokenizer), config.pack)
               for split in ("train", "val")}
    skipped = SkipCounts()
    tokens = learned = 0
    for conversation in conversations(config.data, config.format, config.max_examples, skipped, config.split):
        try:
            ids, labels = masker.tokens(conversation.messages, conversation.tools)
        except SoloError:  # a template that cannot be masked at all: the whole run stops, saying what to do
            raise
        except Exception:  # the template rejects this one (a content type it cannot print, for one)
            skipped.add("chat template cannot render it")
            continue
        if len(ids) > config.seq_len:
            skipped.add(f"longer than seq_len {config.seq_len}")
            continue
        if all(label == IGNORE for label in labels):
            skipped.add("no assistant token in its rendering")
            continue
        tokens += len(ids)
        learned += sum(label != IGNORE for label in labels)
        packers["val" if is_validation(conversation.id, val_fraction) else "train"].add(ids, labels)
    indexes = {split: packer.close() for split, packer in packers.items()}
    report = {"conversations": indexes["train"]["documents"] + indexes["val"]["documents"],
              "skipped": skipped.total, "skipped_by_reason": dict(skipped.reasons.most_common()),
              "train_rows": indexes["train"]["rows"], "val_rows": indexes["val"]["rows"],
              "tokens": tokens, "assistant_tokens": learned,
              "fill": round(tokens / max(1, config.seq_len * (indexes["train"]["rows"] + indexes["val"]["rows"])), 4)}
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if indexes["train"]["rows"] == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in skipped.reasons.most_common(3)) or "no records"
        too_long = f"longer than seq_len {config.seq_len}" in skipped.reasons
        hint = ": raise seq_len (--set seq_len=...)" if too_long else ""
        raise SoloError(f"no usable conversations in {config.data} ({reasons}){hint}")
    metrics = {k: v for k, v in report.items() if k != "skipped_by_reason"}
    metrics.update({f"skipped: {reason}": n for reason, n in skipped.reasons.items()})
    return metrics
