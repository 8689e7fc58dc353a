"""Settings of the export stage (`export:`, `configs/export/`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from solo.config import Schema

ExportFormat = Literal["hf", "gguf"]
GgufQuant = Literal["f32", "f16", "q8_0"]


class ExportConfig(Schema):
    """What the export stage writes beside the run's Hugging Face folder, which it always writes (evaluation
    and serving read it)."""

    formats: list[ExportFormat] = Field(default_factory=lambda: ["hf"], min_length=1)
    """hf: the Hugging Face folder `<run>/` with its model card; gguf: also `<run>.gguf` and an Ollama
    `Modelfile` beside it, for llama.cpp, Ollama and LM Studio."""
    quant: GgufQuant = "f16"
    """The GGUF file's weights: f32 (exact), f16 (half the size, fp16 rounding) or q8_0 (about a quarter, 8-bit
    blocks of 32). Norms stay f32 whatever this says."""

    @field_validator("formats")
    @classmethod
    def _once_each(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError(f"each format once: {formats}")
        return formats
