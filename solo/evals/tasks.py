"""Benchmark files read into prompts, each in lm-evaluation-harness's format for the task, so our
numbers and the harness's are the same measurement (benchmarks/eval_harness_agreement.py checks).

    mmlu/{dev,test}/<subject>_{dev,test}.csv      question,choice0..3,answer (0-3)
    arc_challenge/ARC-Challenge-{Dev,Test}.jsonl  AI2's jsonl: question.stem, question.choices, answerKey
    gsm8k/{train,test}.jsonl                      question, answer (the number after "#### ")

Few-shot examples are the first k of the dev (or train) split, the same for every question.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

LETTERS = "ABCD"


@dataclass(frozen=True)
class Question:
    """A multiple-choice item as scored: each choice is a continuation of `context`."""

    id: str
    subject: str
    context: str
    choices: tuple[str, ...]   # with their leading space: it belongs to the answer, as in lm-eval
    answer: int


@dataclass(frozen=True)
class Problem:
    """A generation item: the model continues `context`; `target` is the number it must reach."""

    id: str
    context: str
    target: str


class MissingData(FileNotFoundError):
    pass


# What each task reads under the data root (MMLU: a test and a dev CSV per subject, in these folders).
TASK_FILES = {
    "mmlu": ("mmlu/test", "mmlu/dev"),
    "arc_challenge": ("arc_challenge/ARC-Challenge-Test.jsonl", "arc_challenge/ARC-Challenge-Dev.jsonl"),
    "gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl"),
}


def missing_data(name: str, root: Path) -> Path | None:
    """The first file or folder task `name` needs under `root` that is not there; None when it has them all."""
    for relative in TASK_FILES[name]:
        if not (root / relative).exists():
            return root / relative
    if name == "mmlu":
        subjects = mmlu_subjects(root)
        if not subjects:
            return root / "mmlu" / "test" / "<subject>_test.csv"
        for subject in subjects:
            if not (root / "mmlu" / "dev" / f"{subject}_dev.csv").is_file():
                return root / "mmlu" / "dev" / f"{subject}_dev.csv"
    return None


def _require(path: Path) -> Path:
    if not path.exists():
        raise MissingData(f"no benchmark data at {path}")
    return path


# ---------------------------------------------------------------- MMLU


def mmlu_subjects(root: Path) -> list[str]:
    return sorted(p.name.removesuffix("_test.csv") for p in _require(root / "mmlu" / "test").glob("*_test.csv"))


def _mmlu_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _mmlu_text(row: dict) -> str:
    options = "".join(f"\n{letter}. {row[f'choice{i}']}" for i, letter in enumerate(LETTERS))
    return f"{row['question'].strip()}{options}\nAnswer:"


def mmlu(root: Path, shots: int, subjects: Sequence[str] | None = None) -> list[Question]:
    """lm-eval's `mmlu` (default variant): a subject line, k solved dev questions, then the question;
    the choices are the letters, so one forward pass scores all four."""
    questions = []
    for subject in subjects or mmlu_subjects(root):
        dev = _mmlu_rows(_require(root / "mmlu" / "dev" / f"{subject}_dev.csv"))[:shots]
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        examples = "".join(f"{_mmlu_text(r)} {LETTERS[int(r['answer'])]}\n\n" for r in dev)
        for i, row in enumerate(_mmlu_rows(_require(root / "mmlu" / "test" / f"{subject}_test.csv"))):
            questions.append(Question(id=f"{subject}/{i}", subject=subject, context=header + examples + _mmlu_text(row),
                                      choices=tuple(f" {letter}" for letter in LETTERS), answer=int(row["answer"])))
    return questions


# ---------------------------------------------------------------- ARC


def _jsonl(path: Path) -> list[dict]:
    with _require(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _arc_text(record: dict) -> str:
    return f"Question: {record['question']['stem']}\nAnswer:"


def _arc_answer(record: dict) -> int:
    return [c["label"] for c in record["question"]["choices"]].index(record["answerKey"])


def arc_challenge(root: Path, shots: int) -> list[Question]:
    """lm-eval's `arc_challenge`: the choices are the answers' texts (3 to 5 of them)."""
    folder = root / "arc_challenge"
    dev = _jsonl(folder / "ARC-Challenge-Dev.jsonl")[:shots]
    examples = "".join(f"{_arc_text(r)} {r['question']['choices'][_arc_answer(r)]['text']}\n\n" for r in dev)
    return [Question(id=r["id"], subject="arc_challenge", context=examples + _arc_text(r),
                     choices=tuple(f" {c['text']}" for c in r["question"]["choices"]), answer=_arc_answer(r))
            for r in _jsonl(folder / "ARC-Challenge-Test.jsonl")]


# ---------------------------------------------------------------- GSM8K

_FINAL_ANSWER = re.compile(r"#### (-?[0-9.,$]+)")


def gsm8k_answer(text: str) -> str | None:
    """The number after the first "#### ", with the commas, dollar signs and final period that the
    reference answers and lm-eval's exact match ignore removed; None when there is none."""
    match = _FINAL_ANSWER.search(text)
    if match is None:
        return None
    number = match.group(1).replace(",", "").replace("$", "").rstrip(".")
    return number or None


def gsm8k(root: Path, shots: int) -> list[Problem]:
    """lm-eval's `gsm8k`: k worked train solutions, each ending in "#### <number>", then the problem."""
    examples = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n"
                       for r in _jsonl(root / "gsm8k" / "train.jsonl")[:shots])
    return [Problem(id=f"gsm8k/{i}", context=f"{examples}Question: {r['question']}\nAnswer:",
                    target=gsm8k_answer(r["answer"]) or "")
            for i, r in enumerate(_jsonl(root / "gsm8k" / "test.jsonl"))]


# ---------------------------------------------------------------- sampling

T = TypeVar("T")


def sample(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A fixed sample, spread over the whole set (MMLU's first questions are all one subject), kept
    in file order: the same seed gives the same questions on every machine."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]
