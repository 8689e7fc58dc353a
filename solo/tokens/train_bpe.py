"""The tokenizer stage: byte-level BPE trained on a hash-spread sample of your text, and a report of how well
it compresses held-out text beside Hugging Face's stock BPE of the same size."""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import ByteLevelBPETokenizer, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from solo.data.read import Document, Documents
from solo.errors import SoloError
from solo.tokens.config import TokenizerConfig
from solo.tokens.shards import is_validation
from solo.tokens.tokenizer import SPECIAL_TOKENS, wrap

HELD_OUT_BYTES = 2_000_000  # per domain: enough for stable ratios, small enough to hold in memory


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: every byte is in the alphabet, so no input is ever unknown. Digits are
    split one by one, which keeps arithmetic learnable."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap(tokenizer)


def train_plain_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> ByteLevelBPETokenizer:
    """The yardstick: Hugging Face's stock byte-level BPE (GPT-2's recipe, no digit splitting),
    with the same special tokens so that both vocabularies have the same size."""
    plain = ByteLevelBPETokenizer(add_prefix_space=False)
    plain.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                              special_tokens=SPECIAL_TOKENS, show_progress=False)
    return plain


def sample_priority(doc_id: str) -> int:
    """A document's place in the sampling order: a salted hash of its id, so the sample spreads
    over the whole corpus in any input order, and is independent of the validation split (which
    hashes the bare id)."""
    return int.from_bytes(hashlib.sha1(b"bpe-sample\x1f" + doc_id.encode()).digest()[:8], "big")


def sample_cutoff(priorities: np.ndarray, sizes: np.ndarray, max_bytes: int) -> tuple[int, int, int]:
    """The priority below which documents make up `max_bytes`, and how many documents and bytes
    that is: they are taken in priority order while fewer than `max_bytes` are taken, so the last
    one may cross it and one is always taken."""
    order = np.argsort(priorities, kind="stable")
    before = np.cumsum(sizes[order]) - sizes[order]
    taken = int(np.count_nonzero(before < max_bytes))
    cutoff = int(priorities[order[taken]]) if taken < len(order) else 2**64
    return cutoff, taken, int(sizes[order[:taken]].sum())


@dataclass
class Scan:
    """What one streaming pass over the corpus learns: where the sample stops, and held-out text."""

    cutoff: int
    documents: int = 0
    sample_documents: int = 0
    sample_bytes: int = 0
    held_out: dict[str, list[str]] = field(default_factory=dict)


def scan(documents: Iterable[Document], max_bytes: int, val_fraction: float) -> Scan:
    """One pass: 16 bytes per training document (its priority and size) to place the sample's
    cutoff, and up to HELD_OUT_BYTES of validation text per domain for the report."""
    priorities, sizes = array("Q"), array("q")  # 8 bytes each, not a Python int's 36
    held_out: dict[str, list[str]] = {}
    held_bytes: dict[str, int] = {}
    for doc_id, text, domain in documents:
        size = len(text.encode())
        if is_validation(doc_id, val_fraction):
            if held_bytes.get(domain, 0) < HELD_OUT_BYTES:
                held_out.setdefault(domain, []).append(text)
                held_bytes[domain] = held_bytes.get(domain, 0) + size
            continue
        priorities.append(sample_priority(doc_id))
        sizes.append(size)
    if not priorities:
        raise SoloError("no training text for the tokenizer: add data (or lower tokenize.val_fraction)")
    cutoff, taken, taken_bytes = sample_cutoff(np.frombuffer(priorities, dtype=np.uint64),
                                               np.frombuffer(sizes, dtype=np.int64), max_bytes)
    return Scan(cutoff, documents=len(sizes), sample_documents=taken, sample_bytes=taken_bytes, held_out=held_out)


def sample(documents: Iterable[Document], cutoff: int, val_fraction: float) -> Iterator[str]:
    """The training sample, streamed in corpus order: never a validation document."""
    for doc_id, text, _ in documents:
        if not is_validation(doc_id, val_fraction) and sample_priority(doc_id) < cutoff:
            yield text


def compression(tokenizer: Tokenizer | ByteLevelBPETokenizer, texts: list[str]) -> dict:
    """Bytes per token (higher: more text per step of the model) and tokens per whitespace word."""
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    size = sum(len(t.encode()) for t in texts)
    words = sum(len(t.split()) for t in texts)
    return {"bytes_per_token": round(size / max(tokens, 1), 4), "tokens_per_word": round(tokens / max(words, 1), 4)}


def compression_report(tokenizers: dict[str, Tokenizer | ByteLevelBPETokenizer],
                       held_out: dict[str, list[str]]) -> dict[str, dict]:
    """Per domain, and over all held-out text: its size, and each tokenizer's compression of it."""
    domains = {**held_out, "all": [t for texts in held_out.values() for t in texts]} if held_out else {}
    return {domain: {"documents": len(texts), "bytes": sum(len(t.encode()) for t in texts),
                     **{name: compression(tok, texts) for name, tok in tokenizers.items()}}
            for domain, texts in domains.items()}


def report_markdown(report: dict) -> str:
    lines = ["# Tokenizer report", "",
             f"Vocabulary {report['vocab_size']:,}, trained in {report['seconds']['train']} s on "
             f"{report['sample']['documents']:,} documents ({report['sample']['bytes'] / 1e6:.2f} MB), "
             f"sampled by hash from {report['sample']['of_documents']:,}. Held-out text is the validation "
             "documents (`tokenize.val_fraction`), never in the sample. *plain* is Hugging Face's "
             "stock byte-level BPE of the same size, trained on the same sample.", ""]
    if not report["held_out"]:
        return "\n".join(lines + ["No held-out documents: raise tokenize.val_fraction or add data."]) + "\n"
    lines += ["| domain | documents | MB | bytes/token | plain bytes/token | tokens/word | plain tokens/word |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for domain, d in report["held_out"].items():
        lines.append(f"| {domain} | {d['documents']:,} | {d['bytes'] / 1e6:.2f} | {d['solo']['bytes_per_token']:.3f} | "
                     f"{d['plain']['bytes_per_token']:.3f} | {d['solo']['tokens_per_word']:.3f} | "
                     f"{d['plain']['tokens_per_word']:.3f} |")
    return "\n".join(lines) + "\n"


def train_stage(documents: Documents, config: TokenizerConfig, val_fraction: float, output: Path,
                progress=print) -> dict:
    """The tokenizer stage: sample, train, save to `output`, and write `report.{json,md}` there."""
    started = time.time()
    found = scan(documents(), config.sample_bytes, val_fraction)
    scanned = time.time()
    trained = train_bpe(sample(documents(), found.cutoff, val_fraction), config.vocab_size, config.min_frequency)
    trained_at = time.time()
    trained.save_pretrained(str(output))
    plain = train_plain_bpe(sample(documents(), found.cutoff, val_fraction), config.vocab_size, config.min_frequency)
    report = {
        "vocab_size": len(trained),
        "sample": {"documents": found.sample_documents, "bytes": found.sample_bytes, "of_documents": found.documents},
        "seconds": {"scan": round(scanned - started, 2), "train": round(trained_at - scanned, 2)},
        "held_out": compression_report({"solo": trained.backend_tokenizer, "plain": plain}, found.held_out),
    }
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.md").write_text(report_markdown(report))
    overall = report["held_out"].get("all")
    progress(f"tokenizer: {len(trained):,} tokens trained on {found.sample_bytes / 1e6:.1f} MB in "
             f"{trained_at - scanned:.1f} s" + (f"; held-out bytes/token {overall['solo']['bytes_per_token']} "
                                                f"(plain BPE {overall['plain']['bytes_per_token']})"
                                                if overall else ""))
    metrics = {"vocab_size": len(trained), "sample_bytes": found.sample_bytes,
               "seconds": round(trained_at - started, 2)}
    if overall:
        metrics["held_out_bytes_per_token"] = overall["solo"]["bytes_per_token"]
        metrics["plain_bytes_per_token"] = overall["plain"]["bytes_per_token"]
    return metrics
