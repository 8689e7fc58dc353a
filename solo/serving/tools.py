"""Tool calls out of generated text: the chat template's `<|tool_call|>{"name": ..., "arguments":
{...}}<|/tool_call|>` markup becomes OpenAI's `tool_calls`, in a whole answer or as it streams.

A call whose JSON does not parse, or that names no function, stays in the content as the model
wrote it: the client sees what happened instead of a call that was never made.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from solo.serving.protocol import FunctionCallOut, ToolCallOut
from solo.tokens.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(body: str) -> ToolCallOut | None:
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    arguments = call.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return ToolCallOut(id=tool_call_id(), function=FunctionCallOut(name=call["name"], arguments=json.dumps(arguments)))


@dataclass
class Parsed:
    content: str
    calls: list[ToolCallOut]


class ToolCallStream:
    """Text pieces in; content to show and completed calls out. Text that may begin a call's
    opening marker is held back until it is known not to."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self.calls: list[ToolCallOut] = []

    def push(self, text: str, final: bool = False) -> Parsed:
        self._buffer += text
        content, calls = "", []
        while True:
            if self._in_call:
                end = self._buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(TOOL_CALL_CLOSE):]
                self._in_call = False
                call = parse_call(body)
                if call is None:
                    content += TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE
                else:
                    calls.append(call)
            else:
                start = self._buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = 0 if final else _partial_suffix(self._buffer, TOOL_CALL_OPEN)
                    content += self._buffer[:len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
                content += self._buffer[:start]
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN):]
                self._in_call = True
        if final and self._in_call:  # cut off before the call closed: show it as written
            content += TOOL_CALL_OPEN + self._buffer
            self._buffer, self._in_call = "", False
        self.calls += calls
        return Parsed(content, calls)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
