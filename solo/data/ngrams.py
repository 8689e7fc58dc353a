"""Word n-grams hashed to uint64, vectorized: the shared currency of near-dedup and decontamination.

Each distinct word is hashed once (xxhash64, the same on every worker and every run: Python's
`hash` is salted per process); an n-gram's hash is a mix of its words' hashes computed for all
n-grams at once with numpy, so no n-gram string is ever built.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
# Odd 64-bit constants: one multiplier per position in the n-gram, so "a b" and "b a" differ.
_POSITION = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                      0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
                      0x2545F4914F6CDD1D, 0x27BB2EE687B0B0FD, 0x8CB92BA72F3D8DD7, 0xA0761D6478BD642F,
                      0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F],
                     dtype=np.uint64)
MAX_N = len(_POSITION)


def words(text: str, numbers_to_zero: bool = False) -> list[str]:
    """Lowercase words with punctuation stripped; numbers read as `0` when asked (datatrove's
    MinHash normalization does so, so that a changed date or count does not hide a duplicate)."""
    text = text.lower()
    if numbers_to_zero:
        text = _NUMBER.sub("0", text)
    return _WORD.findall(text)


def word_hashes(tokens: list[str]) -> np.ndarray:
    distinct = set(tokens)
    table = dict(zip(distinct, map(xxhash.xxh64_intdigest, map(str.encode, distinct))))
    return np.fromiter(map(table.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads the bits of a sum of products over the whole word."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ngram_hashes(hashed_words: np.ndarray, n: int) -> np.ndarray:
    """The hash of every run of `n` consecutive words (uint64 arithmetic wraps, on purpose)."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"n-grams of 1 to {MAX_N} words, not {n}")
    count = len(hashed_words) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        total = np.zeros(count, dtype=np.uint64)
        for k in range(n):
            total += hashed_words[k:k + count] * _POSITION[k]
        return mix64(total)


def text_ngrams(text: str, n: int, numbers_to_zero: bool = False) -> np.ndarray:
    return ngram_hashes(word_hashes(words(text, numbers_to_zero)), n)
