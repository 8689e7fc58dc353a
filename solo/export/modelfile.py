"""An Ollama Modelfile for a GGUF file: `FROM`, a `TEMPLATE` in Ollama's Go-template syntax that renders
system, user, assistant and tool turns as the model's own chat template does (and, for a template that writes
Hermes' `<tool_call>` markup, the tools offered and the assistant's tool calls), and a `PARAMETER stop` per
end-of-turn token.

The Go template is derived from the chat template by rendering it: each role's text before and after a
message's content, the text before the first message, and the generation prompt, found with marker
contents, then checked against a whole conversation rendered by the chat template itself. A template that
is not one prefix and one suffix per role (one that folds the system prompt into the first user turn, say)
gets no TEMPLATE line, and the Modelfile says so: Ollama then reads the chat template from the GGUF file.

Ollama learns from the TEMPLATE alone whether a model takes tools (it uses `.Tools`) and how to read a call
from its output (the text around `.ToolCalls`: here `<tool_call>` and a `{"name": ..., "arguments": ...}`
object), so the tools turn and the calls are rendered too where probing shows the chat template writes them
Hermes' way. Their JSON is Go's (compact, keys in Go's order), the same content as the chat template's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from solo.serving.tools import detect_tool_parser
from solo.tokens.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

ROLES = ("system", "user", "assistant", "tool")
_MARK = "SOLOMARK{}QZ"  # a message's content while probing: text no template adds or changes
# Tools and calls to probe with: two of each, so that what joins them shows, with arguments that are not flat.
_TOOLS = [{"type": "function", "function": {"name": f"solo_tool_{n}", "description": _MARK.format(f"tool{n}"),
                                            "parameters": {"type": "object", "properties": {"x": {"type": "string"}},
                                                           "required": ["x"]}}} for n in range(2)]
_CALLS = [{"type": "function", "function": {"name": f"solo_tool_{n}", "arguments": {"x": _MARK.format(n), "n": [n]}}}
          for n in range(2)]


@dataclass(frozen=True)
class ChatTurns:
    """A chat template as text around each message: `head` once, then per message `prefixes[role]` + content +
    `suffixes[role]`, and `generation_prompt` where the assistant is to answer."""

    head: str
    prefixes: dict[str, str]
    suffixes: dict[str, str]
    generation_prompt: str
    tools: tuple[str, str] | None = None  # the tools turn: the text before and after the JSON list of tools
    tool_calls: bool = False  # assistant turns end their content with Hermes' calls, one `<tool_call>` each

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        text = self.head + "".join(self.prefixes[m["role"]] + m["content"] + self.suffixes[m["role"]]
                                   for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _split(text: str, *marks: str) -> list[str] | None:
    """`text` cut at each mark in turn: the text before, between and after them; None unless each is there once."""
    pieces = []
    for mark in marks:
        if text.count(mark) != 1:
            return None
        before, text = text.split(mark)
        pieces.append(before)
    return [*pieces, text]


def _head(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The text before the first message's prefix (a BOS token, say). A one-message conversation puts the head and
    the user prefix together; a user, assistant, user one shows the user prefix alone, after the assistant's
    suffix, which a user, assistant one ends with."""
    a, b, c = (_MARK.format(n) for n in range(3))
    one = _split(_render(tokenizer, [{"role": "user", "content": a}]), a)
    two = _split(_render(tokenizer, [{"role": "user", "content": a}, {"role": "assistant", "content": b}]), a, b)
    three = _split(_render(tokenizer, [{"role": "user", "content": a}, {"role": "assistant", "content": b},
                                       {"role": "user", "content": c}]), a, b, c)
    if None in (one, two, three) or not three[2].startswith(two[2]):
        return None
    user_prefix = three[2][len(two[2]):]
    return one[0][:len(one[0]) - len(user_prefix)] if one[0].endswith(user_prefix) else None


def chat_turns(tokenizer: PreTrainedTokenizerBase) -> ChatTurns | None:
    """The tokenizer's chat template as a prefix and a suffix per role, or None when it is not of that shape."""
    if not tokenizer.chat_template:
        return None
    try:
        head = _head(tokenizer)
        if head is None:
            return None
        prefixes, suffixes = {}, {}
        for role in ROLES:
            mark = _MARK.format(role)
            try:
                pieces = _split(_render(tokenizer, [{"role": role, "content": mark}]), mark)
            except Exception:  # a role the template refuses (raise_exception) is left out of the Go template
                continue
            if pieces is not None and pieces[0].startswith(head):
                prefixes[role], suffixes[role] = pieces[0][len(head):], pieces[1]
        if not {"system", "user", "assistant"} <= prefixes.keys():
            return None
        user = [{"role": "user", "content": _MARK.format(0)}]
        prompt, plain = _render(tokenizer, user, True), _render(tokenizer, user)
        if not prompt.startswith(plain):
            return None
        turns = ChatTurns(head, prefixes, suffixes, prompt[len(plain):])
        # The shape holds only if whole conversations render as the pieces put together.
        conversation = [{"role": role, "content": _MARK.format(i)}
                        for i, role in enumerate(("system", "user", "assistant", "user", "assistant", "user"))]
        for messages in (conversation, conversation[1:]):
            for ask in (False, True):
                if _render(tokenizer, messages, ask) != turns.render(messages, ask):
                    return None
    except Exception:  # a template that cannot render these conversations has no Go-template form here
        return None
    return _with_tools(tokenizer, turns)


def _hermes_call(function: dict) -> str:
    """One call as Hermes' markup, as solo's chat template writes it: the tags, each on a line of its own."""
    return (f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(function["name"], ensure_ascii=False)}, "arguments": '
            f'{json.dumps(function["arguments"], ensure_ascii=False)}}}\n{TOOL_CALL_CLOSE}')


def _with_tools(tokenizer: PreTrainedTokenizerBase, turns: ChatTurns) -> ChatTurns:
    """`turns` with the tools turn and Hermes' calls, where the chat template writes them as the Go template
    will: the tools as one JSON list (`tools | tojson`) between fixed texts after the head, and each call right
    after the assistant's content. Anything else, and the Go template renders plain turns only."""
    if detect_tool_parser(tokenizer.chat_template) != "hermes":
        return turns
    try:
        user = [{"role": "user", "content": _MARK.format(0)}]
        rest = _render(tokenizer, user)[len(turns.head):]
        offered = tokenizer.apply_chat_template(user, tools=_TOOLS, tokenize=False)
        turn = offered[len(turns.head):len(offered) - len(rest)]
        # HF's tojson is json.dumps with its default separators and non-ASCII kept.
        around = _split(turn, json.dumps(_TOOLS, ensure_ascii=False))
        if not offered.startswith(turns.head) or not offered.endswith(rest) or around is None:
            return turns
        answer = [*user, {"role": "assistant", "content": _MARK.format(1)}]
        called = [*user, {**answer[1], "tool_calls": _CALLS}]
        calls = "".join(_hermes_call(call["function"]) for call in _CALLS)
        before, after = _split(_render(tokenizer, answer), _MARK.format(1)) or ("", "")
        if _render(tokenizer, called) != before + _MARK.format(1) + calls + after:
            return turns
    except Exception:  # a template that cannot render tools or calls keeps the Go template of plain turns
        return turns
    return ChatTurns(turns.head, turns.prefixes, turns.suffixes, turns.generation_prompt, (around[0], around[1]),
                     True)


def _literal(text: str) -> str:
    """Text as a Go template action that prints it: a Go string literal (JSON's escapes are Go's too, with the
    non-ASCII characters left as they are), so that no whitespace trimming or `{{` in it can change it."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(turns: ChatTurns, bos_token: str | None = None) -> str:
    """Ollama's TEMPLATE: `.Messages` rendered turn by turn; a trailing assistant message is left open (Ollama
    continues it), and after any other last message comes the generation prompt. A head that is the BOS token
    is left to llama.cpp, which adds BOS itself where the tokenizer does."""
    head = "" if turns.head == bos_token else turns.head
    lines = [_literal(head)]
    if turns.tools:
        # Ollama's `json` is Go's json.Marshal; the list is joined as tojson joins it.
        lines.append("{{- if .Tools }}" + _literal(turns.tools[0]) + _literal("[")
                     + '{{ range $j, $t := .Tools }}{{ if $j }}{{ ", " }}{{ end }}{{ json $t }}{{ end }}'
                     + _literal("]") + _literal(turns.tools[1]) + "{{ end }}")
    lines += ["{{- range $i, $m := .Messages }}", "{{- $last := eq (len (slice $.Messages $i)) 1 }}"]
    # Ollama finds how a call starts (the tag) in the template's own text inside `range .ToolCalls`, so this is
    # plain text, not a Go string; no action beside it trims whitespace. `.Function.Arguments` prints as JSON.
    calls = (f'{{{{ range $m.ToolCalls }}}}{TOOL_CALL_OPEN}\n{{"name": "{{{{ .Function.Name }}}}", "arguments": '
             f'{{{{ .Function.Arguments }}}}}}\n{TOOL_CALL_CLOSE}{{{{ end }}}}') if turns.tool_calls else ""
    for n, role in enumerate(r for r in ROLES if r in turns.prefixes):
        keyword = "if" if n == 0 else "else if"
        suffix = _literal(turns.suffixes[role])
        if role == "assistant" and suffix:
            suffix = "{{ if not $last }}" + suffix + "{{ end }}"
        content = "{{ $m.Content }}" + (calls if role == "assistant" else "")
        lines.append(f'{{{{- {keyword} eq $m.Role "{role}" }}}}{_literal(turns.prefixes[role])}{content}{suffix}')
    lines += ["{{- end }}",
              f'{{{{- if and $last (ne $m.Role "assistant") }}}}{_literal(turns.generation_prompt)}{{{{ end }}}}',
              "{{- end }}"]
    return "\n".join(line for line in lines if line)


def modelfile(gguf_name: str, turns: ChatTurns | None, stops: list[str], bos_token: str | None = None) -> str:
    """The Modelfile beside `gguf_name`: `ollama create NAME -f Modelfile`, then `ollama run NAME`."""
    lines = ["# An Ollama model from solo's GGUF export: ollama create NAME -f Modelfile, then ollama run NAME",
             f"FROM ./{gguf_name}", ""]
    if turns is None:
        lines += ["# The chat template is not one prefix and suffix per role, so it has no Go-template form here:",
                  "# Ollama takes the one in the GGUF file (tokenizer.chat_template).", ""]
    else:
        lines += ['TEMPLATE """' + go_template(turns, bos_token) + '"""', ""]
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    return "\n".join(lines).rstrip() + "\n"
