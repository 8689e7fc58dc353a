"""Settings of the tokenizer stage (`tokenizer:`, `configs/tokenizer/`) and the tokenize stage (`tokenize:`,
`configs/tokenize/`)."""

from __future__ import annotations

from pydantic import Field

from solo.config import Schema


class TokenizerConfig(Schema):
    """Byte-level BPE trained on a sample of the training text."""

    vocab_size: int = Field(default=4096, ge=300, le=1_000_000)
    """Tokens in the vocabulary, special tokens included."""
    min_frequency: int = Field(default=2, ge=1)
    """Fewest occurrences in the sample for a merge to be learned."""
    sample_bytes: int = Field(default=50_000_000, ge=1000)
    """Bytes of text, sampled by hash over the whole corpus, that BPE trains on."""


class TokenizeConfig(Schema):
    """The prepared documents encoded and packed into fixed-length rows, split into train and validation."""

    seq_len: int = Field(default=256, ge=8)
    """Tokens per row: the context the model trains on."""
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    """Share of documents held out for validation (picked by a hash of their id)."""
    rows_per_shard: int = Field(default=8192, ge=1)
    """Rows per .npy shard file."""
