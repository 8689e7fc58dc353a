"""The part of Go's text/template that Ollama Modelfile templates use, to render them where Go is not installed:
text and actions with `{{-`/`-}}` trimming, `range $i, $m := …` and `range …`, `if`/`else if`/`else`, `$x := …`,
string literals, fields (`.Messages`, `$m.Role`, `$.Messages`, `.Function.Name`), parentheses, and the functions
eq, ne, and, or, not, len, slice and Ollama's json. Anything else raises. A map or a list prints as JSON, as
Ollama's tool-call arguments do (their String method). tests/unit/test_export_modelfile.py also renders with Go
itself where `go` is on the PATH, which keeps this one honest."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_ACTION = re.compile(r'\{\{(-\s)?((?:"(?:\\.|[^"\\])*"|.)*?)(\s-)?\}\}', re.S)  # a `}}` in a string is no end
_TOKEN = re.compile(r'\s*("(?:\\.|[^"\\])*"|-?\d+|\(|\)|:=|,|\$?[A-Za-z_]\w*(?:\.\w+)*|\$(?:\.\w+)*|\.\w+(?:\.\w+)*)')


def _lex(template: str) -> list[tuple[str, str]]:
    """("text", …) and ("action", …) pieces, with Go's trimming applied to the text beside a trimmed action."""
    pieces: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(template):
        text = template[position:match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        pieces += [("text", text), ("action", match.group(2).strip())]
        position, trim_next = match.end(), bool(match.group(3))
    tail = template[position:]
    return pieces + [("text", tail.lstrip() if trim_next else tail)]


def _tokens(action: str) -> list[str]:
    tokens, position = [], 0
    while position < len(action.rstrip()):
        match = _TOKEN.match(action, position)
        if not match:
            raise ValueError(f"not in the subset: {action!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


@dataclass
class _Node:
    kind: str                                   # text, output, assign, if, range
    value: object = None                        # text; tokens; (names, tokens)
    branches: list = field(default_factory=list)  # if: [(tokens | None, body)]; range: [(None, body)]


def _parse(pieces: list[tuple[str, str]], start: int = 0, stop: tuple[str, ...] = ()) -> tuple[list[_Node], int]:
    body, i = [], start
    while i < len(pieces):
        kind, content = pieces[i]
        words = content.split(None, 1) if kind == "action" else []
        head = words[0] if words else None
        if kind == "text":
            body.append(_Node("text", content))
        elif head in stop:
            return body, i
        elif head == "if":
            node, condition = _Node("if"), _tokens(words[1])
            while True:
                branch, i = _parse(pieces, i + 1, ("else", "end"))
                node.branches.append((condition, branch))
                ending = pieces[i][1].split(None, 2)
                if ending[0] == "end":
                    break
                condition = _tokens(ending[2]) if len(ending) > 1 and ending[1] == "if" else None
            body.append(node)
        elif head == "range":
            names, _, source = words[1].rpartition(":=")  # no `:=`: no names
            loop, i = _parse(pieces, i + 1, ("end",))
            body.append(_Node("range", ([n.strip() for n in names.split(",") if n.strip()], _tokens(source)),
                              [(None, loop)]))
        elif ":=" in content or re.match(r"\$\w+\s*=", content):
            name, _, expression = re.split(r"\s*(:?=)\s*", content, maxsplit=1)
            body.append(_Node("assign", (name, _tokens(expression))))
        else:
            body.append(_Node("output", _tokens(content)))
        i += 1
    if stop:
        raise ValueError(f"no {{{{ end }}}} for a block ({stop})")
    return body, i


def _truth(value) -> bool:
    return bool(value)  # Go: false, 0, nil and empty strings, slices and maps are false


def go_json(value) -> str:
    """Go's json.Marshal: compact, map keys sorted, and <, >, & escaped as Go escapes them for HTML."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


_FUNCTIONS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not _truth(a), "len": len,
    "slice": lambda x, i: x[i:], "json": go_json,
    "and": lambda *xs: next((x for x in xs if not _truth(x)), xs[-1]),
    "or": lambda *xs: next((x for x in xs if _truth(x)), xs[-1]),
}


def _value(token: str, scopes: list[dict], dot):
    if token.startswith('"') or token.lstrip("-").isdigit():
        return json.loads(token)
    if token.startswith("$"):
        name, *path = token.split(".")
        value = next(scope[name] for scope in reversed(scopes) if name in scope)
    else:
        value, path = dot, token.split(".")[1:]
    for part in path:
        value = value[part]
    return value


def _evaluate(tokens: list[str], scopes: list[dict], dot):
    def operand(i: int):
        if tokens[i] == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                j += 1
            return _evaluate(tokens[i + 1:j - 1], scopes, dot), j
        return _value(tokens[i], scopes, dot), i + 1

    if tokens[0] in _FUNCTIONS:
        args, i = [], 1
        while i < len(tokens):
            value, i = operand(i)
            args.append(value)
        return _FUNCTIONS[tokens[0]](*args)
    value, i = operand(0)
    if i != len(tokens):
        raise ValueError(f"not in the subset: {tokens}")
    return value


def _run(body: list[_Node], scopes: list[dict], dot, out: list[str]) -> None:
    scopes = [*scopes, {}]  # a variable lives to the end of the block that declares it
    for node in body:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "output":
            value = _evaluate(node.value, scopes, dot)
            out.append(go_json(value) if isinstance(value, dict | list) else str(value))
        elif node.kind == "assign":
            name, tokens = node.value
            target = next((scope for scope in reversed(scopes) if name in scope), scopes[-1])
            target[name] = _evaluate(tokens, scopes, dot)
        elif node.kind == "if":
            for condition, branch in node.branches:
                if condition is None or _truth(_evaluate(condition, scopes, dot)):
                    _run(branch, scopes, dot, out)
                    break
        else:
            names, tokens = node.value
            for index, item in enumerate(_evaluate(tokens, scopes, dot)):
                bound = dict(zip(names, [index, item])) if len(names) == 2 else dict(zip(names, [item]))
                _run(node.branches[0][1], [*scopes, bound], item, out)


def render(template: str, data: dict) -> str:
    """`template` executed on `data` (maps stand for Go structs: `.Messages` is data["Messages"])."""
    body, _ = _parse(_lex(template))
    out: list[str] = []
    _run(body, [{"$": data}], data, out)
    return "".join(out)
