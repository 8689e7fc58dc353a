"""The Ollama Modelfile: its Go template renders a conversation exactly as the model's chat template does (with
Go's own text/template where `go` is installed, and with tests/gotemplate.py, the same subset, everywhere)."""

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


def go_data(messages: list[dict]) -> dict:
    return {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}


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

type Message struct{ Role, Content string }

func main() {
\tvar data struct{ Messages []Message }
\tif err := json.NewDecoder(os.Stdin).Decode(&data); err != nil {
\t\tpanic(err)
\t}
\ttemplate.Must(template.New("modelfile").Parse(os.Args[1])).Execute(os.Stdout, data)
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
