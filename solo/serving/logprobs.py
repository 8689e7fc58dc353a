"""Token log-probabilities in OpenAI's two shapes: chat's `content` list (with each token's UTF-8
bytes, since a byte-level token may hold part of a character) and the legacy completions one."""

from __future__ import annotations

import functools

from transformers import PreTrainedTokenizerBase

from solo.serving.engine import TokenLogprob
from solo.serving.protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprobOut, TopLogprob


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE writes byte b as a printable character: itself when printable, else 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {chr(b if b in printable else next(extra)): b for b in range(256)}


class TokenTexts:
    """Each token's text and bytes, decoded once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self._cache:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
            alphabet = _byte_level_alphabet()
            if piece and token_id not in self.tokenizer.all_special_ids and all(c in alphabet for c in piece):
                raw = [alphabet[c] for c in piece]
            else:  # a special token, or a tokenizer that is not byte-level
                raw = list(text.encode())
            self._cache[token_id] = (text, raw)
        return self._cache[token_id]

    def chat(self, logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
        def top(token_id: int, logprob: float) -> TopLogprob:
            text, raw = self(token_id)
            return TopLogprob(token=text, logprob=logprob, bytes=raw)

        return ChoiceLogprobs(content=[
            TokenLogprobOut(**top(lp.token_id, lp.logprob).model_dump(), top_logprobs=[top(i, v) for i, v in lp.top])
            for lp in logprobs])

    def completion(self, logprobs: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
        tokens = [self(lp.token_id)[0] for lp in logprobs]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return CompletionLogprobs(tokens=tokens, token_logprobs=[lp.logprob for lp in logprobs],
                                  top_logprobs=[{self(i)[0]: v for i, v in lp.top} for lp in logprobs],
                                  text_offset=offsets)
