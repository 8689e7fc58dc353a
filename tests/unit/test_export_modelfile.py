"""The Ollama Modelfile: its Go template renders a conversation exactly as the model's chat template does (with
Go's own text/template where `go` is installed, and with tests/gotemplate.py, the same subset, everywhere), and
solo's tools, tool calls and tool results with the same text around JSON of the same content."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from solo.export.modelfile import chat_turns, go_template, modelfile
from solo.tokens.tokenizer import load
from tests import gotemplate

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# The system prompt folded into the first user turn: no prefix and suffix per role renders it.
FOLDED = ("{% for message in messages %}{% if message['role'] == 'user' %}[INST] {% if loop.index0 == 1 %}"
          "{{ messages[0]['content'] }} {% endif %}{{ message['content'] }} [/INST]{% elif message['role'] == "
          "'assistant' %}{{ message['content'] }}</s>{% endif %}{% endfor %}")

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief.\n{{ not a template }}"}, {"role": "user", "content": "Café №42: naïve?"},
     {"role": "assistant", "content": "Déjà vu—3.14!"}, {"role": "user", "content": "\"quoted\"\tand\ttabbed"}],
    [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "Yes, and"}],  # Ollama continues it
]


@pytest.fixture()
def fresh_tokenizer(tiny_model_dir: Path):
    """solo's tokenizer, loaded anew: tests set other chat templates on it."""
    return load(tiny_model_dir)


def chat_template_renders(tokenizer, messages: list[dict]) -> str:
    """What the chat template gives: the generation prompt after a user turn, an open last assistant turn."""
    open_reply = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not open_reply,
                                         continue_final_message=open_reply)


# A conversation with tools: two offered (one with text Go's JSON escapes), a call with no content, a tool's
# result, two calls after some content, another result; the generation prompt follows.
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city, <°C> & wind",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "add", "description": "a + b",
                                            "parameters": {"type": "object", "properties": {
                                                "a": {"type": "number"}, "b": {"type": "number"}}}}}]
TOOL_CONVERSATION = [
    {"role": "system", "content": "Use the tools."}, {"role": "user", "content": "Weather in Zürich, and 2 + 3?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "Now the sum.", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}},
        {"type": "function", "function": {"name": "add", "arguments": {"b": 0, "a": [1, {"x": None}]}}}]},
    {"role": "tool", "content": "5"},
]


def go_data(messages: list[dict], tools: list[dict] | None = None) -> dict:
    """Ollama's template data: maps stand for its structs, every field there (a nil slice ranges over nothing)."""
    return {"Tools": tools or [], "Messages": [
        {"Role": m["role"], "Content": m["content"],
         "ToolCalls": [{"Function": {"Name": c["function"]["name"], "Arguments": c["function"]["arguments"]}}
                       for c in m.get("tool_calls", [])]} for m in messages]}


def json_canonical(text: str) -> str:
    """`text` with each JSON object or list in it written one way (keys sorted, Python's spacing): the chat template
    writes JSON with json.dumps (`tojson`: ", " and ": ", keys in the caller's order), Ollama with Go's json.Marshal
    (compact, struct or sorted key order, `<` as \\u003c), so exact equality cannot hold; the same content with the
    same text around it does."""
    out, i, decoder = [], 0, json.JSONDecoder()
    while i < len(text):
        if text[i] in "[{":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                pass
            else:
                out.append(json.dumps(value, ensure_ascii=False, sort_keys=True))
                i = end
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize("template", ["solo", CHATML, LLAMA3], ids=["solo", "chatml", "llama3"])
def test_the_go_template_renders_as_the_chat_template(fresh_tokenizer, template):
    if template != "solo":
        fresh_tokenizer.chat_template = template
    turns = chat_turns(fresh_tokenizer)
    assert turns is not None
    text = go_template(turns, bos_token=fresh_tokenizer.bos_token)
    for messages in CONVERSATIONS:
        assert gotemplate.render(text, go_data(messages)) == chat_template_renders(fresh_tokenizer, messages)


def test_solos_turns_and_its_modelfile(fresh_tokenizer):
    turns = chat_turns(fresh_tokenizer)
    assert turns.prefixes == {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>",
                              "tool": "<|tool|>"}
    assert set(turns.suffixes.values()) == {"<|end|>"} and turns.generation_prompt == "<|assistant|>"
    text = modelfile("mine.gguf", turns, ["<|end|>", "<|endoftext|>"])
    lines = text.splitlines()
    assert "FROM ./mine.gguf" in lines
    assert lines[-2:] == ['PARAMETER stop "<|end|>"', 'PARAMETER stop "<|endoftext|>"']
    assert f'TEMPLATE """{go_template(turns)}"""' in text
    messages = [{"role": "user", "content": "hi"}]
    assert gotemplate.render(go_template(turns), go_data(messages)) == "<|user|>hi<|end|><|assistant|>"


def test_a_llama3_bos_head_is_left_to_llama_cpp(fresh_tokenizer):
    fresh_tokenizer.chat_template = LLAMA3
    fresh_tokenizer.bos_token = "<|endoftext|>"
    turns = chat_turns(fresh_tokenizer)
    assert turns.head == "<|endoftext|>"
    assert "<|endoftext|>" not in go_template(turns, bos_token="<|endoftext|>")
    assert go_template(turns).startswith('{{ "<|endoftext|>" }}')  # a head that is no BOS stays


def test_solos_go_template_renders_tools_calls_and_results(fresh_tokenizer):
    turns = chat_turns(fresh_tokenizer)
    assert turns.tool_calls and turns.tools is not None
    text = go_template(turns)
    assert "{{- if .Tools }}" in text and "{{ range $m.ToolCalls }}" in text
    # Ollama takes the call's shape from the template's text around `.Function.Name` and `.Function.Arguments`.
    assert '<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n</tool_call>' in text
    rendered = gotemplate.render(text, go_data(TOOL_CONVERSATION, TOOLS))
    expected = fresh_tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False,
                                                   add_generation_prompt=True)
    assert rendered != expected  # the JSON is Go's: see json_canonical
    assert json_canonical(rendered) == json_canonical(expected)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Zürich"}}\n</tool_call>'
    assert f"<|assistant|>{call}<|end|><|tool|>" in rendered
    assert '"description":"Weather in a city, \\u003c°C\\u003e \\u0026 wind"' in rendered
    # Without tools, the same conversation's plain turns render exactly as before.
    plain = [{k: v for k, v in m.items() if k != "tool_calls"} for m in TOOL_CONVERSATION]
    assert gotemplate.render(text, go_data(plain)) == chat_template_renders(fresh_tokenizer, plain)


@pytest.mark.parametrize("template", [CHATML, LLAMA3], ids=["chatml", "llama3"])
def test_templates_without_hermes_calls_get_no_tools(fresh_tokenizer, template):
    fresh_tokenizer.chat_template = template
    turns = chat_turns(fresh_tokenizer)
    assert turns.tools is None and not turns.tool_calls
    assert ".Tools" not in go_template(turns) and ".ToolCalls" not in go_template(turns)


def test_a_template_of_another_shape_gets_no_template_line(fresh_tokenizer):
    fresh_tokenizer.chat_template = FOLDED
    assert chat_turns(fresh_tokenizer) is None
    text = modelfile("m.gguf", None, ["</s>"])
    assert "TEMPLATE" not in text.replace("tokenizer.chat_template", "") and "FROM ./m.gguf" in text


GO_PROGRAM = """package main

import (
\t"encoding/json"
\t"os"
\t"text/template"
)

// Ollama's types, as far as the template sees them: arguments print as JSON (Ollama's String method), and the
// template function json is Ollama's too.
type Arguments map[string]any

func (a Arguments) String() string { b, _ := json.Marshal(a); return string(b) }

type ToolCall struct{ Function struct{ Name string; Arguments Arguments } }
type Message struct {
\tRole, Content string
\tToolCalls     []ToolCall
}

func main() {
\tvar data struct {
\t\tTools    []map[string]any
\t\tMessages []Message
\t}
\tif err := json.NewDecoder(os.Stdin).Decode(&data); err != nil {
\t\tpanic(err)
\t}
\tfuncs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
\tt := template.Must(template.New("modelfile").Funcs(funcs).Parse(os.Args[1]))
\tif err := t.Execute(os.Stdout, data); err != nil {
\t\tpanic(err)
\t}
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="go is not installed: Go's text/template (what Ollama renders "
                                                        "TEMPLATE with) checks tests/gotemplate.py's reading of it")
@pytest.mark.parametrize("template", ["solo", CHATML, LLAMA3], ids=["solo", "chatml", "llama3"])
def test_go_itself_renders_it_as_the_chat_template(fresh_tokenizer, template, tmp_path):
    if template != "solo":
        fresh_tokenizer.chat_template = template
    text = go_template(chat_turns(fresh_tokenizer), bos_token=fresh_tokenizer.bos_token)
    (tmp_path / "render.go").write_text(GO_PROGRAM)
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin:/usr/local/go/bin", "HOME": str(tmp_path),
           "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off"}
    subprocess.run(["go", "build", "-o", str(tmp_path / "render"), str(tmp_path / "render.go")], check=True,
                   env=env, cwd=tmp_path, timeout=300)
    for messages in CONVERSATIONS:
        done = subprocess.run([str(tmp_path / "render"), text], input=json.dumps(go_data(messages)), check=True,
                              capture_output=True, text=True, timeout=60)
        assert done.stdout == chat_template_renders(fresh_tokenizer, messages)
    # Tools, calls and results: Go renders them exactly as tests/gotemplate.py does (both with Go's JSON).
    data = go_data(TOOL_CONVERSATION, TOOLS)
    done = subprocess.run([str(tmp_path / "render"), text], input=json.dumps(data), check=True,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == gotemplate.render(text, data)
    if template == "solo":
        expected = fresh_tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False,
                                                       add_generation_prompt=True)
        assert json_canonical(done.stdout) == json_canonical(expected)
