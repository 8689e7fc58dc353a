"""Decontamination: drop training documents that share a long word n-gram with an evaluation set.

A 13-word run (lowercased, punctuation stripped) shared with a benchmark question is evidence that
the page quotes the benchmark; training on it would make later scores mean less. The index is the
sorted n-gram hashes of every question (8 bytes each, ~1 MB for GSM8K, MMLU and ARC's test sets
together), sent to the workers once. A question shorter than the n-gram is not indexed: a run of
fewer words is too common to be evidence.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solo.data.config import DecontamConfig, EvalSetSpec
from solo.data.ngrams import text_ngrams
from solo.errors import SoloError


def _files(spec: EvalSetSpec, suffix: str) -> list[Path]:
    path = spec.resolved()
    if not path.exists():
        raise SoloError(f"decontamination set {spec.label()}: {spec.path} does not exist (resolved to {path})")
    files = [path] if path.is_file() else sorted(path.rglob(f"*{suffix}"))
    if not files:
        raise SoloError(f"decontamination set {spec.label()}: no {suffix} files in {path}")
    return files


def eval_texts(spec: EvalSetSpec) -> Iterator[str]:
    """The text of each question: what a contaminated page would quote."""
    if spec.kind == "mmlu":
        for file in _files(spec, ".csv"):
            with file.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    choices = [row[k] for k in sorted(row) if k and k.startswith("choice")]
                    yield " ".join([row.get("question") or "", *choices])
        return
    for file in _files(spec, ".jsonl"):
        for line in file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if spec.kind == "gsm8k":
                yield row["question"]
            else:  # AI2's ARC layout
                question = row["question"]
                yield " ".join([question["stem"], *(c["text"] for c in question["choices"])])


@dataclass(frozen=True)
class EvalIndex:
    hashes: np.ndarray   # sorted uint64
    labels: np.ndarray   # int16: which set each hash came from (the first set that has it)
    names: tuple[str, ...]
    ngram_words: int

    def contaminated_by(self, text: str) -> str | None:
        """The name of the first evaluation set sharing an n-gram with `text`, or None."""
        grams = text_ngrams(text, self.ngram_words)
        if grams.size == 0 or self.hashes.size == 0:
            return None
        where = np.searchsorted(self.hashes, grams).clip(max=self.hashes.size - 1)
        hits = where[self.hashes[where] == grams]
        return self.names[int(self.labels[hits].min())] if hits.size else None


def build_index(config: DecontamConfig) -> EvalIndex:
    hashes, labels = [], []
    for label, spec in enumerate(config.sets):
        grams = np.unique(np.concatenate([text_ngrams(t, config.ngram_words) for t in eval_texts(spec)] or
                                         [np.empty(0, dtype=np.uint64)]))
        hashes.append(grams)
        labels.append(np.full(grams.size, label, dtype=np.int16))
    if not hashes:
        return EvalIndex(np.empty(0, np.uint64), np.empty(0, np.int16), (), config.ngram_words)
    all_hashes, all_labels = np.concatenate(hashes), np.concatenate(labels)
    order = np.lexsort((all_labels, all_hashes))
    all_hashes, all_labels = all_hashes[order], all_labels[order]
    first = np.r_[True, all_hashes[1:] != all_hashes[:-1]]
    return EvalIndex(all_hashes[first], all_labels[first], tuple(s.label() for s in config.sets), config.ngram_words)


def mark_contaminated(batch: dict, index: EvalIndex) -> dict:
    """Ray Data step: reason `decontam:<set>` for kept documents that quote an evaluation set."""
    reasons = list(batch["reason"])
    for i, text in enumerate(batch["text"]):
        if not reasons[i]:
            found = index.contaminated_by(text)
            if found:
                reasons[i] = f"decontam:{found}"
    return {**batch, "reason": reasons}
