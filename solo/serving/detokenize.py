"""Text out of token ids, as they are decoded: what the API streams, and what evaluation reads."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextStream:
    """Token ids in, text deltas out: the deltas concatenate to the decode of every id that is not
    a stop token, a delta never ends inside a UTF-8 character, and a stop string is cut off
    (text that might begin one is held back until it is known not to)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_token_ids: set[int], stop_strings: list[str]):
        self._tokenizer = tokenizer
        self._hidden = stop_token_ids
        self._stops = stop_strings
        self._hold = max((len(s) for s in stop_strings), default=1) - 1
        self._ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] were already turned into text
        self._pending = ""  # decoded but not yet emitted: it may start a stop string
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_ids: list[int], final: bool) -> str:
        """Text to emit now; `final` flushes what is held back. After a stop string, nothing."""
        if self.stopped:
            return ""
        self._ids.extend(t for t in token_ids if t not in self._hidden)
        # Re-decoding from the previous boundary lets a token's bytes join the ones before it.
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if final or not text.endswith("\ufffd"):  # U+FFFD at the end: a character still incomplete
            self._pending += text[len(done):]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[:min(hits)], ""
            return out
        cut = len(self._pending) if final else max(0, len(self._pending) - self._hold)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out
