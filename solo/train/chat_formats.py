"""Conversations from instruction-tuning files, whatever their layout, as OpenAI-style messages.

    messages  {"messages": [{"role": "system|user|assistant|tool", "content": ...,
                             "tool_calls": [{"function": {"name": ..., "arguments": ...}}]}], "tools": [...]}
    alpaca    {"instruction": ..., "input": ..., "output": ...}
    sharegpt  {"conversations": [{"from": "system|human|gpt|tool", "value": ...}]}

A file is jsonl (one record a line; gzipped or zstd-compressed too), one JSON list of records, parquet or
arrow; a folder of them, a folder written by `datasets`' save_to_disk, or an hf:// path, as solo.data.records
reads them. `format: auto` recognises each record by its keys. A record that is not one of these is counted
under the reason it failed and skipped: a bad line never stops a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from solo.data.records import NotJSON, read_records, record_files

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}


class Malformed(ValueError):
    """A record that cannot be a conversation; its message is the reason it is counted under."""


@dataclass
class Conversation:
    id: str
    messages: list[dict]
    tools: list[dict] | None = None


@dataclass
class SkipCounts:
    """Records skipped, by reason (the reasons are short and fixed, so they tally)."""

    reasons: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


def detect_format(record: dict) -> str:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    raise Malformed("unknown layout: no messages, conversations or instruction/output")


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{what} is not a string")
    return value


def _check_tool_calls(calls) -> None:
    if not isinstance(calls, list) or not calls:
        raise Malformed("tool_calls is not a non-empty list")
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Malformed("tool call without a function name")
        if not isinstance(function.get("arguments", {}), (str, dict)):
            raise Malformed("tool call arguments are neither a JSON string nor an object")


def from_messages(record: dict) -> list[dict]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise Malformed("messages is not a non-empty list")
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise Malformed("a message is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise Malformed("unknown role")
        clean = {"role": role, "content": message.get("content")}
        if role == "assistant" and message.get("tool_calls") is not None:
            _check_tool_calls(message["tool_calls"])
            clean["tool_calls"] = message["tool_calls"]
            if clean["content"] is not None:
                _text(clean["content"], "content")
        else:
            if not _text(clean["content"], "content").strip() and role != "tool":
                raise Malformed("empty message")
        out.append(clean)
    return out


def from_alpaca(record: dict) -> list[dict]:
    instruction = _text(record.get("instruction"), "instruction").strip()
    extra = _text(record.get("input") or "", "input").strip()
    output = _text(record.get("output"), "output").strip()
    if not instruction or not output:
        raise Malformed("empty message")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def from_sharegpt(record: dict) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise Malformed("conversations is not a non-empty list")
    out = []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
            raise Malformed("unknown ShareGPT speaker")
        value = _text(turn.get("value"), "value")
        if not value.strip():
            raise Malformed("empty message")
        out.append({"role": SHAREGPT_ROLES[turn["from"]], "content": value})
    return out


READERS = {"messages": from_messages, "alpaca": from_alpaca, "sharegpt": from_sharegpt}


def to_conversation(record, layout: str, fallback_id: str) -> Conversation:
    """One record as a conversation, or `Malformed` with the reason it is not one."""
    if not isinstance(record, dict):
        raise Malformed("not a JSON object")
    layout = detect_format(record) if layout == "auto" else layout
    try:
        messages = READERS[layout](record)
    except KeyError as missing:
        raise Malformed(f"no {missing.args[0]} field ({layout} layout)") from None
    if not any(m["role"] == "assistant" for m in messages):
        raise Malformed("no assistant turn")
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise Malformed("tools is not a list")
    return Conversation(str(record.get("id", fallback_id)), messages, tools)


def check_conversation_source(source: str, split: str | None) -> None:
    """The files of `source` found (an hf:// path downloaded), or one line saying why not: no such path, a folder
    that is neither a dataset nor one of record files, an unknown split. `embedded` needs no files."""
    if source != "embedded":
        record_files(source, split, "finetune data")


def read_conversations(source: str, layout: str, max_examples: int | None, skipped: SkipCounts,
                       split: str | None = None) -> Iterator[Conversation]:
    """Conversations from a file or folder of records (jsonl, compressed too; a JSON list; parquet; arrow), a
    folder written by save_to_disk (its `split`) or an hf:// path, each malformed record tallied in `skipped`
    by reason."""
    count = 0
    for path in record_files(source, split, "finetune data"):
        for number, record in read_records(path):
            if max_examples is not None and count >= max_examples:
                return
            try:
                if isinstance(record, NotJSON):
                    raise Malformed(str(record))
                yield to_conversation(record, layout, f"{path.name}:{number}")
                count += 1
            except Malformed as reason:
                skipped.add(str(reason))
