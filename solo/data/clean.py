"""Cleaning one batch of records: normalization, boilerplate lines, the length, language and quality rules in
FineWeb's order, the optional quality classifier, then PII in what is kept; and the exact-dedup key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads

from solo.data import pii
from solo.data import quality as quality_rules
from solo.data.boilerplate import remove_lines
from solo.data.classifier import Model as QualityClassifier
from solo.data.config import DataConfig
from solo.data.language import language_reason
from solo.data.normalize import BLANK_LINES, normalize

CLEANING_COUNTS = ("boilerplate_lines", "pii_email", "pii_ip", "pii_phone")


def clean(batch: dict, config: DataConfig, boilerplate: frozenset[int] = frozenset(),
          classifier: QualityClassifier | None = None) -> dict:
    """Normalize, remove boilerplate lines, apply the length, language and quality rules, then the
    quality classifier (the first rule a document trips is its `reason`), scrub PII from what is
    kept; adds the exact-dedup key and the per-document counts the report sums (`pii_*`,
    `boilerplate_lines`)."""
    f = config.filters
    unfiltered = {spec.domain for spec in config.inputs if not spec.applies_quality_filters()}
    out: dict[str, list] = {name: [] for name in ("text", "reason", "dedup_key", *CLEANING_COUNTS)}
    for text, reason, domain in zip(batch["text"], batch["reason"], batch["domain"]):
        counts = dict.fromkeys(CLEANING_COUNTS, 0)
        if not reason:
            text = normalize(text)
            if boilerplate:
                text, counts["boilerplate_lines"] = remove_lines(text, domain, boilerplate)
                text = BLANK_LINES.sub("\n\n", text)
            text, reason = _first_rule(text, config, domain not in unfiltered, classifier)
        if not reason and f.pii.enabled:
            text, found = pii.scrub(text, f.pii)
            for kind, n in found.items():
                counts[f"pii_{kind}"] = n
        out["text"].append(text)
        out["reason"].append(reason)
        out["dedup_key"].append(hashlib.sha256(text.encode()).hexdigest()[:32] if not reason else "")
        for name, n in counts.items():
            out[name].append(n)
    return {**batch, **out}


def _first_rule(text: str, config: DataConfig, quality: bool,
                classifier: QualityClassifier | None = None) -> tuple[str, str]:
    """(text, reason) after the rules in FineWeb's order, then the classifier; C4 may remove lines
    from the text. `quality` false (code, docs): the length rules only, language id is no judge of
    code either, nor a classifier trained on web pages."""
    f = config.filters
    if not text:
        return text, "empty"
    if len(text) < config.min_chars:
        return text, "too_short"
    if len(text) > config.max_chars:
        return text, "too_long"
    if not quality:
        return text, ""
    if f.language.enabled and (reason := language_reason(text, f.language)):
        return text, reason
    text, reason = quality_rules.apply(text, f)
    if not reason and classifier is not None and classifier.score(text) < f.classifier.threshold:
        reason = "quality_classifier"
    return text, reason


def cleaning_stats(staged_dir: Path) -> dict[str, int]:
    """The per-document counts of `clean`, summed from the staged pass one column batch at a time."""
    totals = dict.fromkeys(CLEANING_COUNTS, 0)
    staged = pads.dataset(str(staged_dir), format="parquet")
    for batch in staged.to_batches(columns=list(CLEANING_COUNTS), batch_size=65536):
        for name in CLEANING_COUNTS:
            totals[name] += int(pc.sum(batch.column(name)).as_py() or 0)
    return totals




