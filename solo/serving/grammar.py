"""Grammar-constrained decoding for JSON output, with xgrammar (the library vLLM's structured
outputs use), so `response_format` and forced tool calls mean the same on every engine.

Before each sampled token the matcher masks every token the JSON schema cannot take next; the
token sampled is then fed back to it. Once the JSON is whole, only a stop token is allowed.
Whitespace between JSON tokens is not allowed: a small model would otherwise spend its budget
on indentation.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import torch
import xgrammar

ANY_OBJECT = json.dumps({"type": "object"})


def check_schema(schema: dict[str, Any]) -> str:
    """The schema as the engines take it; a ValueError says why xgrammar cannot use it."""
    text = json.dumps(schema)
    problem = _schema_problem(text)
    if problem:
        raise ValueError(f"the JSON schema cannot be enforced: {problem}")
    return text


@functools.lru_cache(maxsize=1024)
def _schema_problem(text: str) -> str:
    """Why xgrammar cannot compile the schema, or "". Cached per distinct schema: an agent sends the same
    tools with every request, and compiling a schema takes milliseconds."""
    try:
        xgrammar.Grammar.from_json_schema(text, any_whitespace=False)
    except Exception as error:  # xgrammar raises RuntimeError or ValueError, with the reason
        return str(error).splitlines()[0] or type(error).__name__
    return ""


class Grammars:
    """Matchers for one vocabulary. Compiled grammars are cached per (schema, stop tokens)."""

    def __init__(self, tokenizer: Callable[[], Any], vocab_size: int):
        self._tokenizer = tokenizer  # called once, on the first constrained request
        self.vocab_size = vocab_size
        self._compilers: dict[tuple[int, ...], Any] = {}
        self._bitmask = None  # one, reused: sequences are masked one at a time, on one thread

    def matcher(self, schema: str, stop_token_ids: tuple[int, ...]):
        compiler = self._compilers.get(stop_token_ids)
        if compiler is None:
            tokenizer = self._tokenizer()
            if tokenizer is None:
                raise ValueError("constrained output needs the engine to know the model's tokenizer")
            info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size,
                                                           stop_token_ids=list(stop_token_ids))
            compiler = self._compilers[stop_token_ids] = xgrammar.GrammarCompiler(info, max_threads=1)
        return xgrammar.GrammarMatcher(compiler.compile_json_schema(schema, any_whitespace=False))

    def mask(self, matcher, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [vocab] with every token the grammar forbids next at -inf."""
        if self._bitmask is None:
            self._bitmask = xgrammar.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(self._bitmask)
        logits = logits.float().clone()
        xgrammar.apply_token_bitmask_inplace(logits, self._bitmask)
        return logits
