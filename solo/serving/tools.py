"""Tool calls in each model family's own markup: OpenAI's `tools` in, the calls a model writes out as OpenAI's
`tool_calls`, whole or as they stream, and a forced call (`tool_choice` "required" or a named function) as
the markup the grammar holds the model to.

The families, by the names vLLM's `--tool-call-parser` gives them:

    hermes        <tool_call>{"name": ..., "arguments": {...}}</tool_call>, as many as it likes (Hermes,
                  Qwen 2.5 and 3, and solo's own template)
    llama3_json   the whole answer is {"name": ..., "parameters": {...}} (Llama 3.1 to 3.3)
    mistral       [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...] (Mistral's v3 tokenizers)
    solo          <|tool_call|>{"name": ..., "arguments": {...}}<|/tool_call|>: tokenizers solo trained before
                  it took Hermes' markup

A call is a JSON object of a non-empty `name` and its arguments (an object, under `arguments` or `parameters`)
and nothing else, so that a JSON answer that happens to have a `name` is no call. Markup whose JSON does not
parse, or is no call, stays in the content as the model wrote it: the client sees what happened instead of a
call that was never made.
"""

from __future__ import annotations

import abc
import json
import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any

from solo.serving.config import ToolParserName
from solo.serving.protocol import FunctionCallOut, ToolCallOut
from solo.tokens.tokenizer import LEGACY_TOOL_CALL_CLOSE, LEGACY_TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

MISTRAL_CALLS = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"  # Llama 3.1 may open a JSON call with it


@dataclass
class Parsed:
    content: str
    calls: list[ToolCallOut]


@dataclass(frozen=True)
class ForcedCall:
    """A call the reply must be, as the family writes it: `prefix` goes into the prompt (given, not sampled),
    then JSON matching `schema`, then `close` (None: nothing; the end of the turn closes the call)."""

    prefix: str
    schema: dict[str, Any]
    close: str | None


class ToolFormat(abc.ABC):
    """One family's tool-call markup."""

    name: ToolParserName

    @abc.abstractmethod
    def stream(self) -> CallStream:
        """A parser for one answer."""

    @abc.abstractmethod
    def forced_call(self, tools: list[dict[str, Any]]) -> ForcedCall:
        """A call of one of `tools` (OpenAI's function definitions: name, parameters) in this markup."""

    def call_id(self) -> str:
        return f"call_{uuid.uuid4().hex[:24]}"

    def parse(self, text: str) -> Parsed:
        """Calls out of a whole answer."""
        return self.stream().push(text, final=True)


class CallStream(abc.ABC):
    """Text pieces in; content to show and completed calls out. `calls` holds every call so far."""

    def __init__(self, fmt: ToolFormat) -> None:
        self._format = fmt
        self.calls: list[ToolCallOut] = []

    @abc.abstractmethod
    def push(self, text: str, final: bool = False) -> Parsed: ...

    def _call(self, call: Any, arguments_key: str = "arguments") -> ToolCallOut | None:
        """A JSON value as a call: an object with a non-empty `name` and object arguments (under `arguments_key`,
        or the other of `arguments` and `parameters`, which models mix up); None if it is not one."""
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            return None
        other = "parameters" if arguments_key == "arguments" else "arguments"
        arguments = call.get(arguments_key, call.get(other, {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string, as OpenAI sends them
            try:
                arguments = json.loads(arguments, strict=False)
            except (json.JSONDecodeError, RecursionError):  # not JSON, or nested too deep
                return None
        if not isinstance(arguments, dict) or set(call) - {"name", arguments_key, other}:
            return None
        return ToolCallOut(id=self._format.call_id(),
                           function=FunctionCallOut(name=call["name"], arguments=json.dumps(arguments)))

    def _calls(self, text: str, arguments_key: str = "arguments") -> list[ToolCallOut] | None:
        """Calls out of `text`: JSON objects (or lists of them) separated by whitespace or `;`; None unless all
        of it is calls."""
        # Not strict: a raw control character in a string is taken, since xgrammar (0.2.9) lets a length-limited
        # string (`maxLength`) have one; the arguments go out re-encoded, as valid JSON.
        decoder, calls, at = json.JSONDecoder(strict=False), [], 0
        while True:
            while at < len(text) and (text[at].isspace() or text[at] == ";"):
                at += 1
            if at == len(text):
                return calls or None
            try:
                value, at = decoder.raw_decode(text, at)
            except (json.JSONDecodeError, RecursionError):  # not JSON, or nested too deep
                return None
            for item in value if isinstance(value, list) else [value]:
                call = self._call(item, arguments_key)
                if call is None:
                    return None
                calls.append(call)


def call_schema(tools: list[dict[str, Any]], arguments_key: str = "arguments") -> dict[str, Any]:
    """A call of one of `tools`: {"name": ..., arguments_key: {...}}, its arguments valid against the tool's
    parameters."""
    calls = [{"type": "object", "properties": {"name": {"const": tool["name"]},
                                               arguments_key: tool.get("parameters") or {"type": "object"}},
              "required": ["name", arguments_key], "additionalProperties": False} for tool in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


# ---------------------------------------------------------------- hermes and solo: calls between tags


class TaggedFormat(ToolFormat):
    def __init__(self, name: ToolParserName, open_tag: str, close_tag: str, prefix: str):
        self.name, self.open, self.close, self._prefix = name, open_tag, close_tag, prefix

    def stream(self) -> CallStream:
        return TaggedStream(self)

    def forced_call(self, tools: list[dict[str, Any]]) -> ForcedCall:
        return ForcedCall(self._prefix, call_schema(tools), self.close)


class TaggedStream(CallStream):
    """Calls between an opening and a closing tag, anywhere in the answer, as many as there are. Text that may
    begin the opening tag is held back until it is known not to."""

    def __init__(self, fmt: TaggedFormat) -> None:
        super().__init__(fmt)
        self._open, self._close = fmt.open, fmt.close
        self._buffer = ""
        self._in_call = False

    def push(self, text: str, final: bool = False) -> Parsed:
        self._buffer += text
        content, calls = "", []
        while True:
            if self._in_call:
                end = self._buffer.find(self._close)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(self._close):]
                self._in_call = False
                found = self._calls(body)
                if found is None or len(found) != 1:
                    content += self._open + body + self._close
                else:
                    calls += found
            else:
                start = self._buffer.find(self._open)
                if start < 0:
                    keep = 0 if final else _partial_suffix(self._buffer, self._open)
                    content += self._buffer[:len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
                content += self._buffer[:start]
                self._buffer = self._buffer[start + len(self._open):]
                self._in_call = True
        if final and self._in_call:
            # The answer ended inside a call: a whole one still counts (Qwen may end its turn without the closing
            # tag, and vLLM's hermes parser takes it too); one cut off is shown as written.
            found = self._calls(self._buffer)
            if found is None or len(found) != 1:
                content += self._open + self._buffer
            else:
                calls += found
            self._buffer, self._in_call = "", False
        self.calls += calls
        return Parsed(content, calls)


# ---------------------------------------------------------------- llama3_json: the answer is the call


class Llama3JsonFormat(ToolFormat):
    name: ToolParserName = "llama3_json"

    def stream(self) -> CallStream:
        return WholeAnswerStream(self)

    def forced_call(self, tools: list[dict[str, Any]]) -> ForcedCall:
        return ForcedCall("", call_schema(tools, "parameters"), None)


class WholeAnswerStream(CallStream):
    """An answer that opens with `{` (or Llama 3.1's python tag) is held back whole and parsed as calls
    (`;`-separated, as vLLM's llama3_json reads them); any other answer streams as content."""

    def __init__(self, fmt: ToolFormat) -> None:
        super().__init__(fmt)
        self._buffer = ""
        self._decided: bool | None = None  # None: too little seen yet; True: a call; False: content

    def push(self, text: str, final: bool = False) -> Parsed:
        self._buffer += text
        if self._decided is None:
            start = self._buffer.lstrip()
            if start.startswith(("{", PYTHON_TAG)):
                self._decided = True
            elif start and not PYTHON_TAG.startswith(start):
                self._decided = False
        if self._decided is False or (final and self._decided is None):
            content, self._buffer = self._buffer, ""
            return Parsed(content, [])
        if not final:
            return Parsed("", [])
        body, self._buffer = self._buffer, ""
        calls = self._calls(body.strip().removeprefix(PYTHON_TAG), "parameters")
        if calls is None:
            return Parsed(body, [])
        self.calls += calls
        return Parsed("", calls)


# ---------------------------------------------------------------- mistral: [TOOL_CALLS] and a JSON list


class MistralFormat(ToolFormat):
    name: ToolParserName = "mistral"
    _ID_CHARACTERS = string.ascii_letters + string.digits

    def stream(self) -> CallStream:
        return MarkedTailStream(self, MISTRAL_CALLS)

    def forced_call(self, tools: list[dict[str, Any]]) -> ForcedCall:
        return ForcedCall(MISTRAL_CALLS + " ", {"type": "array", "items": call_schema(tools), "minItems": 1,
                                                "maxItems": 1}, None)

    def call_id(self) -> str:
        # Mistral's chat templates refuse any other id when the call comes back in the conversation.
        return "".join(secrets.choice(self._ID_CHARACTERS) for _ in range(9))


class MarkedTailStream(CallStream):
    """Content up to a marker, then calls to the end of the answer. Text that may begin the marker is held
    back until it is known not to; after it, everything is held back until the answer is whole."""

    def __init__(self, fmt: ToolFormat, marker: str) -> None:
        super().__init__(fmt)
        self._marker = marker
        self._buffer = ""
        self._in_calls = False

    def push(self, text: str, final: bool = False) -> Parsed:
        self._buffer += text
        content = ""
        if not self._in_calls:
            start = self._buffer.find(self._marker)
            if start < 0:
                keep = 0 if final else _partial_suffix(self._buffer, self._marker)
                content, self._buffer = self._buffer[:len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
                return Parsed(content, [])
            content, self._buffer = self._buffer[:start], self._buffer[start + len(self._marker):]
            self._in_calls = True
        if not final:
            return Parsed(content, [])
        body, self._buffer = self._buffer, ""
        calls = self._calls(body)
        if calls is None:
            return Parsed(content + self._marker + body, [])
        self.calls += calls
        return Parsed(content, calls)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


# ---------------------------------------------------------------- which family


FORMATS: dict[str, ToolFormat] = {
    # Hermes and Qwen write each call on a line of its own, and so does solo's template.
    "hermes": TaggedFormat("hermes", TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN + "\n"),
    "llama3_json": Llama3JsonFormat(),
    "mistral": MistralFormat(),
    "solo": TaggedFormat("solo", LEGACY_TOOL_CALL_OPEN, LEGACY_TOOL_CALL_CLOSE, LEGACY_TOOL_CALL_OPEN),
}

# Markup that gives a chat template's family away, all of it in the template, checked in this order: solo's old
# tags before Hermes' (`<|tool_call|>` does not contain `<tool_call>`, but be explicit), Llama 3's headers last,
# since a template with both Hermes tags and Llama headers writes its calls in the tags. Llama 3's headers alone
# are Llama 3.0's template too, which has no tools: it must also use `tools`.
_TELLTALES: list[tuple[tuple[str, ...], ToolParserName]] = [
    ((LEGACY_TOOL_CALL_OPEN,), "solo"),
    ((TOOL_CALL_OPEN,), "hermes"),
    ((MISTRAL_CALLS,), "mistral"),
    (("<|start_header_id|>", "tools"), "llama3_json"),
]


def detect_tool_parser(chat_template: str | dict | list | None) -> ToolParserName | None:
    """The family whose tool-call markup the chat template writes; None if it writes none solo knows."""
    if isinstance(chat_template, dict):  # a tokenizer may keep several named templates
        chat_template = chat_template.get("tool_use") or chat_template.get("default")
    elif isinstance(chat_template, list):
        named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
        chat_template = named.get("tool_use") or named.get("default")
    if not isinstance(chat_template, str):
        return None
    for telltales, family in _TELLTALES:
        if all(telltale in chat_template for telltale in telltales):
            return family
    return None


def tool_format(chat_template: str | dict | list | None, configured: ToolParserName | None = None) -> ToolFormat | None:
    """The configured family's markup, else the one the chat template writes; None: the model has none."""
    name = configured or detect_tool_parser(chat_template)
    return None if name is None else FORMATS[name]
