"""Language identification with py3langid, whose model ships inside the package (nothing downloaded)."""

from __future__ import annotations

from functools import lru_cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from solo.data.config import LanguageConfig

# langid's features are byte n-grams: past a few thousand characters the answer no longer changes,
# while the cost keeps growing with the text.
_SAMPLE_CHARS = 5000


@lru_cache(maxsize=1)
def _identifier():
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the text's language; newlines read as spaces, as FineWeb did."""
    return _identifier().classify(text[:_SAMPLE_CHARS].replace("\n", " "))


def language_reason(text: str, c: LanguageConfig) -> str:
    """`lang:<code>` when the text is not in a kept language with enough probability, else ""."""
    code, probability = identify(text)
    return "" if code in c.languages and probability >= c.threshold else f"lang:{code}"
