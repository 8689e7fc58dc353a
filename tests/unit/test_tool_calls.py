"""Each family's tool-call markup read from whole answers and from streams cut anywhere, bad calls left as the
model wrote them, the family told from the chat template, and a forced call's grammar in each family's
vocabulary."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from solo.serving.grammar import Grammars, check_schema
from solo.serving.tools import FORMATS, detect_tool_parser, tool_format
from solo.tokens.tokenizer import CHAT_TEMPLATE, LEGACY_TOOL_CALL_CLOSE, LEGACY_TOOL_CALL_OPEN, load, stop_token_ids
from tests.families import HERMES_TEMPLATE, LLAMA3_TEMPLATE, MISTRAL_TEMPLATE

LOOKUP = {"name": "lookup", "arguments": {"q": "json"}}
FIND = {"name": "find", "arguments": {"path": "/tmp", "deep": True}}


def hermes(call: dict) -> str:
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def legacy(call: dict) -> str:
    return f"{LEGACY_TOOL_CALL_OPEN}{json.dumps(call)}{LEGACY_TOOL_CALL_CLOSE}"


def llama(call: dict) -> str:
    return json.dumps({"name": call["name"], "parameters": call["arguments"]})


# family, an answer in its markup, the content a client sees, the calls (name, arguments) it gets
CASES = [
    ("hermes", "Let me look.\n" + hermes(LOOKUP) + "\n" + hermes(FIND), "Let me look.\n\n", [LOOKUP, FIND]),
    ("hermes", "a<b <tool_call x" + hermes(LOOKUP) + " then", "a<b <tool_call x then", [LOOKUP]),
    ("hermes", "no calls at all, <tool", "no calls at all, <tool", []),
    ("hermes", "bad: <tool_call>{\"name\": \"lookup\", \"argu</tool_call> ok" + hermes(FIND),
     "bad: <tool_call>{\"name\": \"lookup\", \"argu</tool_call> ok", [FIND]),
    ("hermes", "cut off <tool_call>\n{\"name\": \"look", "cut off <tool_call>\n{\"name\": \"look", []),
    ("hermes", "unclosed, but whole: " + hermes(LOOKUP).removesuffix("</tool_call>"), "unclosed, but whole: ",
     [LOOKUP]),
    *[("hermes", as_written, as_written, []) for as_written in ["no name <tool_call>{\"arguments\": {}}</tool_call>",
                                                                 "list <tool_call>[]</tool_call>"]],
    ("solo", "Sure." + legacy(LOOKUP), "Sure.", [LOOKUP]),
    ("solo", legacy(LOOKUP) + legacy(FIND), "", [LOOKUP, FIND]),
    ("llama3_json", llama(LOOKUP), "", [LOOKUP]),
    ("llama3_json", "  <|python_tag|>" + llama(LOOKUP) + "; " + llama(FIND), "", [LOOKUP, FIND]),
    ("llama3_json", json.dumps(LOOKUP), "", [LOOKUP]),  # "arguments", as some fine-tunes write it
    ("llama3_json", "It is {sunny} today.", "It is {sunny} today.", []),
    ("llama3_json", '{"name": "lookup", "parameters": {"q": ', '{"name": "lookup", "parameters": {"q": ', []),
    ("llama3_json", '{"temperature": 21}', '{"temperature": 21}', []),  # JSON, but no call
    ("mistral", "Checking. [TOOL_CALLS] " + json.dumps([LOOKUP, FIND]), "Checking. ", [LOOKUP, FIND]),
    ("mistral", "[TOOL_CALLS]" + json.dumps(LOOKUP), "", [LOOKUP]),
    *[("mistral", as_written, as_written, []) for as_written in ['[TOOL_CALLS] [{"name": "lookup", "arguments": {',
                                                                  "[TOOL_CALLS] [] and more"]],
    ("mistral", "Just text [TOOL", "Just text [TOOL", []),
]


@pytest.mark.parametrize("family, answer, content, calls", CASES)
def test_calls_are_read_from_a_whole_answer_and_from_a_stream_cut_anywhere(family, answer, content, calls):
    fmt = FORMATS[family]
    whole = fmt.parse(answer)
    assert whole.content == content
    assert [(c.function.name, json.loads(c.function.arguments)) for c in whole.calls] == [
        (c["name"], c["arguments"]) for c in calls]
    for size in (1, 2, 3, 7):
        stream, shown, got = fmt.stream(), "", []
        for i in range(0, len(answer), size):
            parsed = stream.push(answer[i:i + size], final=i + size >= len(answer))
            shown += parsed.content
            got += parsed.calls
        assert shown == content, f"pieces of {size}"
        assert [c.function for c in got] == [c.function for c in whole.calls] and stream.calls == got


def test_json_nested_deeper_than_python_parses_is_content():
    deep = "[" * 100_000
    for family, text in (("hermes", f"<tool_call>{deep}</tool_call>"), ("mistral", f"[TOOL_CALLS] {deep}"),
                         ("llama3_json", '{"name": "x", "parameters": ' + deep)):
        assert FORMATS[family].parse(text).content == text


def test_nothing_is_shown_that_may_still_become_a_call():
    # Content streams as it comes, except what may be the start of the markup.
    stream = FORMATS["hermes"].stream()
    assert stream.push("Hello <tool").content == "Hello "
    assert stream.push("kit").content == "<toolkit"
    mistral = FORMATS["mistral"].stream()
    assert mistral.push("Fine [TOOL_").content == "Fine "
    assert mistral.push("CALLS] [").content == "" and mistral.push("{").content == ""
    # A JSON answer is held back whole; prose is not.
    llama = FORMATS["llama3_json"].stream()
    assert llama.push(" {\"na").content == "" and llama.push("me\"").content == ""
    assert FORMATS["llama3_json"].stream().push("The answer").content == "The answer"


def test_each_call_gets_an_id_mistral_templates_accept_its_own():
    (a, b) = FORMATS["hermes"].parse(hermes(LOOKUP) + hermes(LOOKUP)).calls
    assert a.id.startswith("call_") and a.id != b.id
    (call,) = FORMATS["mistral"].parse("[TOOL_CALLS] " + json.dumps([LOOKUP])).calls
    assert len(call.id) == 9 and call.id.isalnum()


LEGACY_TEMPLATE = CHAT_TEMPLATE.replace("<tool_call>\n", LEGACY_TOOL_CALL_OPEN).replace("\n</tool_call>",
                                                                                         LEGACY_TOOL_CALL_CLOSE)


@pytest.mark.parametrize("template, family", [
    (HERMES_TEMPLATE, "hermes"),
    (LLAMA3_TEMPLATE, "llama3_json"),
    (MISTRAL_TEMPLATE, "mistral"),
    (CHAT_TEMPLATE, "hermes"),  # solo's own, since it took Hermes' markup
    (LEGACY_TEMPLATE, "solo"),  # a tokenizer solo trained before
    ([{"name": "default", "template": "x"}, {"name": "tool_use", "template": MISTRAL_TEMPLATE}], "mistral"),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", None),
    ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% endfor %}", None),  # Llama 3.0
    (None, None),
])
def test_the_family_is_told_from_the_chat_template(template, family):
    assert detect_tool_parser(template) == family


def test_a_configured_parser_wins_over_the_template():
    assert tool_format(HERMES_TEMPLATE, "mistral") is FORMATS["mistral"]
    assert tool_format(HERMES_TEMPLATE) is FORMATS["hermes"]
    assert tool_format("{{ messages }}") is None


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_a_forced_call_is_the_family_markup_around_json_the_schema_holds(family):
    fmt = FORMATS[family]
    tools = [{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
             {"name": "find"}]
    forced = fmt.forced_call(tools)
    call = {"name": "find", ("parameters" if family == "llama3_json" else "arguments"): {}}
    body = json.dumps([call] if family == "mistral" else call)
    # The markup the prompt ends with, the JSON the grammar allows, the closing markup: a call of this family.
    (parsed,) = fmt.parse(forced.prefix + body + (forced.close or "")).calls
    assert parsed.function.name == "find"
    schema = forced.schema["items"] if family == "mistral" else forced.schema
    assert [option["properties"]["name"] for option in schema["anyOf"]] == [{"const": "lookup"}, {"const": "find"}]


FORECAST = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "soon": {"type": "boolean"},
                                             "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["unit", "soon", "days"], "additionalProperties": False}
SHORT_QUERY = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 5}}, "required": ["q"]}


@pytest.mark.parametrize("seed", range(4))
def test_any_text_the_grammar_allows_is_a_call_valid_against_the_schema(family, seed):
    """Tokens drawn at random among those the grammar allows, in each family's vocabulary, until it allows
    only a stop token: with its markup around them, they are one call of one of the tools, its arguments
    valid against that tool's parameters."""
    tokenizer = load(family.folder)
    tools = [{"name": "forecast", "parameters": FORECAST}, {"name": "lookup", "parameters": SHORT_QUERY}]
    fmt = FORMATS[family.name]
    forced = fmt.forced_call(tools)
    close = tokenizer.encode(forced.close or "", add_special_tokens=False)
    stops = tuple(close) if len(close) == 1 else tuple(stop_token_ids(tokenizer))
    grammars = Grammars(lambda: tokenizer, len(tokenizer))
    matcher = grammars.matcher(check_schema(forced.schema), stops)
    rng, drawn = torch.Generator().manual_seed(seed), []
    while not matcher.is_terminated():
        assert len(drawn) < 200, "the grammar never let the call end"
        allowed = torch.isfinite(grammars.mask(matcher, torch.zeros(len(tokenizer)))).nonzero().flatten()
        token = int(allowed[torch.randint(len(allowed), (1,), generator=rng)])
        assert matcher.accept_token(token)
        drawn.append(token)
    assert drawn[-1] in stops
    text = tokenizer.decode(drawn[:-1], skip_special_tokens=False)
    (call,) = fmt.parse(forced.prefix + text + (forced.close or "")).calls
    jsonschema.validate(json.loads(call.function.arguments), {t["name"]: t["parameters"] for t in tools}[
        call.function.name])
