"""Three model families (tests/families.py: Qwen2 with Hermes' markup, Llama 3 with JSON calls, Mistral with
[TOOL_CALLS]) behind the gateway, on the real CPU engine in this process: each loads from its half-precision
checkpoint, stops at its own end of turn, has its calls read from its own markup, and a forced call in that
markup holds to the tool's schema. (Over Ray Serve and the `openai` client:
tests/integration/test_serve_families_over_ray.py.)"""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import torch
from fastapi.testclient import TestClient

from solo.serving.cpu_engine import CpuEngine
from solo.serving.http.app import build_gateway
from solo.serving.http.service import ServedModel
from solo.serving.tools import FORMATS
from solo.tokens.tokenizer import LEGACY_TOOL_CALL_CLOSE, LEGACY_TOOL_CALL_OPEN, load
from tests.api import MODEL, USER, assert_error, events, streamed_calls
from tests.fakes import FakeEngine
from tests.unit.test_tool_calls import LEGACY_TEMPLATE

FORECAST = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "soon": {"type": "boolean"},
                                             "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["unit", "soon", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "forecast", "parameters": FORECAST}},
         {"type": "function", "function": {"name": "lookup", "parameters": {
             # Short, so that an untrained model's string ends within max_tokens.
             "type": "object", "properties": {"q": {"type": "string", "maxLength": 6}}, "required": ["q"]}}}]
NAMED = {"type": "function", "function": {"name": "forecast"}}


@pytest.fixture(scope="module")
def engines(families) -> dict[str, CpuEngine]:
    return {name: CpuEngine(family.folder, max_concurrent=4, threads=1) for name, family in families.items()}


def client_of(engine, tokenizer, tool_parser=None) -> TestClient:
    served = ServedModel(MODEL, engine, tokenizer, tool_parser=tool_parser)
    return TestClient(build_gateway([served], max_new_tokens=64), raise_server_exceptions=False)


def test_half_precision_checkpoints_load_and_compute_in_fp32(family, engines):
    model = engines[family.name].model
    assert type(model).__name__ == family.architecture
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_forced_call_is_valid_against_the_tool_schema_whole_and_streamed(family, engines):
    client = client_of(engines[family.name], load(family.folder))
    for choice in (NAMED, "required"):
        body = {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": choice, "temperature": 0,
                "max_tokens": 64}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        (answer,) = response.json()["choices"]
        assert answer["finish_reason"] == "tool_calls", answer
        (call,) = answer["message"]["tool_calls"]
        chunks = events(client.post("/v1/chat/completions", json={**body, "stream": True}))[:-1]
        (streamed,) = streamed_calls(chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        for got in (call, streamed):
            if choice == NAMED:
                assert got["function"]["name"] == "forecast"
            schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[got["function"]["name"]]
            jsonschema.validate(json.loads(got["function"]["arguments"]), schema)
        assert streamed["function"] == call["function"], "greedy: the stream says what the whole answer said"


def test_a_tool_result_turn_and_a_free_choice_are_answered(family, engines):
    client = client_of(engines[family.name], load(family.folder))
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "abcDEF123", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "json"}'}}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "json encodes."}]
    for conversation in (messages, USER):
        response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": conversation, "tools": TOOLS,
                                                              "tool_choice": "auto", "max_tokens": 8, "seed": 1})
        assert response.status_code == 200, response.text


def markup(family: str, calls: list[dict]) -> str:
    """Calls written as `family`'s chat template writes them."""
    if family == "hermes":
        return "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)
    if family == "mistral":
        return "[TOOL_CALLS] " + json.dumps(calls)
    return "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)


def test_calls_in_each_family_markup_come_back_in_openai_shape(family):
    tokenizer = load(family.folder)
    calls = [{"name": "lookup", "arguments": {"q": "json"}}, {"name": "forecast", "arguments": {"unit": "c"}}]
    text = ("" if family.name == "llama3_json" else "Let me see. ") + markup(family.name, calls)
    script = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.convert_tokens_to_ids(family.end_of_turn)]
    client = client_of(FakeEngine(script, max_context=1024), tokenizer)
    body = {"model": MODEL, "messages": USER, "tools": TOOLS, "max_tokens": len(script)}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (answer,) = response.json()["choices"]
    assert answer["finish_reason"] == "tool_calls"
    assert (answer["message"]["content"] or "") == ("" if family.name == "llama3_json" else "Let me see. ")
    expected = [{"name": c["name"], "arguments": json.dumps(c["arguments"])} for c in calls]
    assert [c["function"] for c in answer["message"]["tool_calls"]] == expected
    chunks = events(client.post("/v1/chat/completions", json={**body, "stream": True}))[:-1]
    assert [c["function"] for c in streamed_calls(chunks)] == expected
    firsts = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or [] if "id" in d]
    assert [d["index"] for d in firsts] == [0, 1]
    # Without tools offered, the markup is plain content.
    plain = client.post("/v1/chat/completions", json={**body, "tools": None}).json()
    assert plain["choices"][0]["message"]["content"] == text


def test_each_family_stops_at_its_end_of_turn(family):
    tokenizer = load(family.folder)
    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    engine = FakeEngine([*tokenizer.encode("Hi.", add_special_tokens=False), end, *tokenizer.encode(" more")])
    client = client_of(engine, tokenizer)
    (answer,) = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json()["choices"]
    assert answer == {"index": 0, "message": {"role": "assistant", "content": "Hi.", "tool_calls": None},
                      "finish_reason": "stop", "logprobs": None}
    assert end in engine.calls[0][1].stop_token_ids


def test_what_a_family_cannot_do_is_a_400_naming_the_parameter(families):
    llama = load(families["llama3_json"].folder)
    two_calls = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}} for i in range(2)]},
        {"role": "tool", "tool_call_id": "c0", "content": "x"}]
    engine = FakeEngine([1], max_context=1024)
    response = client_of(engine, llama).post("/v1/chat/completions", json={"model": MODEL, "messages": two_calls})
    assert_error(response, 400, param="messages", code="invalid_value")
    # A template with no tool-call markup: tools cannot be offered, unless a tool_parser says how.
    plain = load(families["hermes"].folder)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    for choice in ("auto", NAMED):
        response = client_of(engine, plain).post("/v1/chat/completions", json={
            "model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": choice})
        assert_error(response, 400, param="tools", code="invalid_value")
    assert engine.calls == [], "a refused request never reaches the engine"
    assert client_of(engine, plain).post("/v1/chat/completions", json={
        "model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "none"}).status_code == 200
    configured = client_of(FakeEngine([1], max_context=1024), plain, tool_parser="hermes")
    assert configured.post("/v1/chat/completions", json={"model": MODEL, "messages": USER,
                                                         "tools": TOOLS}).status_code == 200
    assert sorted(FORMATS) == ["hermes", "llama3_json", "mistral", "solo"]


def test_a_model_whose_tokenizer_solo_trained_before_the_hermes_markup_still_serves_tool_calls(tokenizer):
    old = copy.deepcopy(tokenizer)  # as such a tokenizer was: the old tags in its vocabulary and its template
    old.add_special_tokens({"additional_special_tokens": [LEGACY_TOOL_CALL_OPEN, LEGACY_TOOL_CALL_CLOSE]})
    old.chat_template = LEGACY_TEMPLATE
    opening, closing = old.convert_tokens_to_ids([LEGACY_TOOL_CALL_OPEN, LEGACY_TOOL_CALL_CLOSE])
    engine = FakeEngine([*old.encode('{"name": "lookup", "arguments": {"q": "json"}}', add_special_tokens=False),
                         closing], max_context=1024)
    body = {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": {"type": "function",
                                                                             "function": {"name": "lookup"}}}
    (answer,) = client_of(engine, old).post("/v1/chat/completions", json=body).json()["choices"]
    (call,) = answer["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"q": "json"}'}
    prompt_ids, params = engine.calls[0]
    assert prompt_ids[-1] == opening and params.stop_token_ids == (closing,), "its own tags open and close the call"


def test_parallel_tool_calls_false_returns_the_first_call_only(families):
    tokenizer = load(families["hermes"].folder)
    calls = [{"name": "lookup", "arguments": {"q": "a"}}, {"name": "lookup", "arguments": {"q": "b"}}]
    script = [*tokenizer.encode(markup("hermes", calls), add_special_tokens=False),
              tokenizer.convert_tokens_to_ids(families["hermes"].end_of_turn)]
    client = client_of(FakeEngine(script, max_context=1024), tokenizer)
    body = {"model": MODEL, "messages": USER, "tools": TOOLS, "max_tokens": len(script)}
    for parallel, expected in ((None, ['{"q": "a"}', '{"q": "b"}']), (True, ['{"q": "a"}', '{"q": "b"}']),
                               (False, ['{"q": "a"}'])):
        request = {**body, **({} if parallel is None else {"parallel_tool_calls": parallel})}
        (answer,) = client.post("/v1/chat/completions", json=request).json()["choices"]
        assert [c["function"]["arguments"] for c in answer["message"]["tool_calls"]] == expected
        chunks = events(client.post("/v1/chat/completions", json={**request, "stream": True}))[:-1]
        assert [c["function"]["arguments"] for c in streamed_calls(chunks)] == expected
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
