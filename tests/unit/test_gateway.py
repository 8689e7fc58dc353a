"""The OpenAI API surface over a scripted fake engine: shapes, streaming, text, every error."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from solo.serving.detokenize import TextStream
from solo.serving.engine import Engine
from solo.serving.http.app import build_gateway
from solo.serving.http.service import ServedModel
from solo.tokens.tokenizer import END_OF_TURN, render_chat, stop_token_ids
from tests.api import MODEL, USER, assert_error, events
from tests.fakes import FakeEngine

ANSWER = "Héllo wörld — naïve café ✓ 日本語 done."


@pytest.fixture
def answer_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(ANSWER, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "the answer must split a character over tokens"
    return ids


def client_for(engine: Engine, tokenizer, max_new_tokens: int = 64) -> TestClient:
    return TestClient(build_gateway([ServedModel(MODEL, engine, tokenizer)], max_new_tokens=max_new_tokens),
                      raise_server_exceptions=False)




def post(client: TestClient, **body):
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **body})




# ---------------------------------------------------------------- happy paths


def test_health_and_models(tokenizer):
    client = client_for(FakeEngine([], max_context=256), tokenizer)
    assert client.get("/health").status_code == 200
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    (card,) = listing["data"]
    assert card["id"] == MODEL and card["object"] == "model" and card["max_model_len"] == 256
    assert isinstance(card["created"], int) and card["owned_by"]


def test_completion_renders_the_chat_template_and_hides_the_stop_token(tokenizer, answer_ids):
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    engine = FakeEngine([*answer_ids, end, *answer_ids])
    response = post(client_for(engine, tokenizer))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": ANSWER, "tool_calls": None}
    assert choice["finish_reason"] == "stop"
    prompt_ids, params = engine.calls[0]
    assert prompt_ids == render_chat(tokenizer, USER, add_generation_prompt=True)[0]
    assert params.stop_token_ids == tuple(stop_token_ids(tokenizer))
    # The stop token was generated, so it is billed, as OpenAI and vLLM do.
    assert body["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": len(answer_ids) + 1,
                             "total_tokens": len(prompt_ids) + len(answer_ids) + 1}


def test_max_tokens_ends_with_length(tokenizer, answer_ids):
    engine = FakeEngine(answer_ids)
    body = post(client_for(engine, tokenizer), max_tokens=3).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["message"]["content"] == tokenizer.decode(answer_ids[:3])


def test_sampling_parameters_reach_the_engine(tokenizer, answer_ids):
    engine = FakeEngine(answer_ids, max_context=256)
    client = client_for(engine, tokenizer, max_new_tokens=64)
    post(client, temperature=0, top_p=0.5, seed=7, max_tokens=5, max_completion_tokens=9)
    post(client)
    explicit, default = engine.calls[0][1], engine.calls[1][1]
    assert (explicit.temperature, explicit.top_p, explicit.seed, explicit.max_tokens) == (0, 0.5, 7, 9)
    assert (default.temperature, default.top_p, default.seed, default.max_tokens) == (1.0, 1.0, None, 64)
    # With no max_tokens, a request gets what is left of the window when that is less.
    tight = FakeEngine(answer_ids, max_context=len(engine.calls[0][0]) + 10)
    post(client_for(tight, tokenizer, max_new_tokens=64))
    assert tight.calls[0][1].max_tokens == 10


def test_tools_and_content_parts_go_through_the_template(tokenizer, answer_ids):
    engine = FakeEngine(answer_ids)
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Find a doc.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "Find json."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"json\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "json encodes."},
    ]
    client = client_for(engine, tokenizer)
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "tools": tools}
                       ).status_code == 200
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find json."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"json\"}"}}]},
        {"role": "tool", "content": "json encodes."},
    ]
    rendered_tools = [{"type": "function", "function": tools[0]["function"]}]
    assert engine.calls[0][0] == render_chat(tokenizer, expected, rendered_tools, add_generation_prompt=True)[0]
    # tool_choice "none": the tools stay out of the prompt.
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "tools": tools,
                                              "tool_choice": "none"})
    assert engine.calls[1][0] == render_chat(tokenizer, expected, None, add_generation_prompt=True)[0]


def test_fields_openai_defines_and_unknown_fields_are_accepted(tokenizer, answer_ids):
    response = post(client_for(FakeEngine(answer_ids), tokenizer), user="u-1", store=False, metadata={"a": "b"},
                    n=1, presence_penalty=0, parallel_tool_calls=True, some_future_field={"x": 1}, temperature=None)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_concatenate_to_the_answer(tokenizer, answer_ids, include_usage):
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    engine = FakeEngine([*answer_ids, end])
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    response = post(client_for(engine, tokenizer), stream=True, **extra)
    assert response.status_code == 200
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "tool_calls": None}
    if include_usage:
        *chunks, usage_chunk = chunks
        assert usage_chunk["choices"] == []
        prompt = len(engine.calls[0][0])
        assert usage_chunk["usage"] == {"prompt_tokens": prompt, "completion_tokens": len(answer_ids) + 1,
                                        "total_tokens": prompt + len(answer_ids) + 1}
    assert all(c["usage"] is None for c in chunks)
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert "".join(pieces) == ANSWER
    assert not any("\ufffd" in p for p in pieces), "a delta split a UTF-8 character"
    assert len([p for p in pieces if p]) > 5, "the answer should arrive in many pieces"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert chunks[-1]["choices"][0]["delta"] == {"role": None, "content": None, "tool_calls": None}


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_answer_and_the_generation(tokenizer, answer_ids, stream):
    engine = FakeEngine(answer_ids + answer_ids)
    response = post(client_for(engine, tokenizer), stop=["nothing", "café"], stream=stream)
    if stream:
        chunks = events(response)[:-1]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        text = response.json()["choices"][0]["message"]["content"]
        finish = response.json()["choices"][0]["finish_reason"]
    assert text == ANSWER[:ANSWER.index("café")]
    assert finish == "stop"
    assert engine.closed_early, "the engine must stop once a stop string is seen"


def test_an_engine_failure_mid_stream_is_an_error_event(tokenizer, answer_ids):
    response = post(client_for(FakeEngine(answer_ids, fail_after=3), tokenizer), stream=True)
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    error = payloads[-2]["error"]
    assert error["type"] == "server_error" and "secret" not in error["message"]


# ---------------------------------------------------------------- text assembly


def test_text_stream_matches_a_full_decode_for_any_token_sequence(tokenizer):
    """Random ids (plenty of them bytes that do not form characters) streamed one or a few at a
    time: the pieces join to the full decode and none ends inside a character."""
    rng = random.Random(0)
    hidden = set(stop_token_ids(tokenizer))
    for _ in range(40):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        text = TextStream(tokenizer, hidden, [])
        pieces, i = [], 0
        while i < len(ids):
            step = rng.choice([1, 1, 2, 3])
            final = i + step >= len(ids)
            pieces.append(text.push(ids[i:i + step], final=final))
            assert final or not pieces[-1].endswith("\ufffd")
            i += step
        visible = [t for t in ids if t not in hidden]
        assert "".join(pieces) == tokenizer.decode(visible, skip_special_tokens=False)


def test_text_stream_holds_back_a_possible_stop_string(tokenizer):
    text = TextStream(tokenizer, set(), ["STOP!"])
    ids = tokenizer.encode("abc STO", add_special_tokens=False)
    assert text.push(ids, final=False) == "abc"  # " STO" may begin "STOP!": it waits
    assert text.push(tokenizer.encode("P!xyz", add_special_tokens=False), final=False) == " "
    assert text.stopped and text.push(ids, final=True) == ""


# ---------------------------------------------------------------- errors


@pytest.fixture
def client(tokenizer, answer_ids) -> TestClient:
    return client_for(FakeEngine(answer_ids, max_context=64), tokenizer)


def test_malformed_json_is_a_400(client):
    response = client.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                           headers={"content-type": "application/json"})
    assert "JSON" in assert_error(response, 400)["message"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"hello"', b""])
def test_a_body_that_is_not_an_object_is_a_400(client, body):
    assert_error(client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize("body, param, code", [
    ({"messages": USER}, "model", "missing_required_parameter"),
    ({"model": MODEL}, "messages", "missing_required_parameter"),
    ({"model": MODEL, "messages": []}, "messages", "invalid_value"),
    ({"model": MODEL, "messages": USER, "temperature": "hot"}, "temperature", "invalid_type"),
    ({"model": MODEL, "messages": USER, "temperature": "0.5"}, "temperature", "invalid_type"),
    ({"model": MODEL, "messages": USER, "temperature": 3}, "temperature", "invalid_value"),
    ({"model": MODEL, "messages": USER, "top_p": 0}, "top_p", "invalid_value"),
    ({"model": MODEL, "messages": USER, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"model": MODEL, "messages": USER, "max_tokens": "10"}, "max_tokens", "invalid_type"),
    ({"model": MODEL, "messages": USER, "stream": "yes"}, "stream", "invalid_type"),
    ({"model": MODEL, "messages": USER, "n": 0}, "n", "invalid_value"),
    ({"model": MODEL, "messages": USER, "top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "invalid_value"),
    ({"model": MODEL, "messages": [{"role": "user"}]}, "messages.0", "invalid_value"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content.0.type", "invalid_value"),
    ({"model": MODEL, "messages": USER, "stream_options": {"include_usage": True}}, "stream_options",
     "invalid_value"),
])
def test_an_invalid_request_is_a_400_naming_the_parameter(client, body, param, code):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


def test_an_unknown_model_is_a_404(client):
    error = assert_error(client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": USER}), 404,
                         param="model", code="model_not_found")
    assert "gpt-9" in error["message"]


def test_a_completion_beyond_the_context_window_is_a_400(client, tokenizer):
    prompt = len(render_chat(tokenizer, USER, add_generation_prompt=True)[0])
    assert post(client, max_tokens=64 - prompt).status_code == 200
    error = assert_error(post(client, max_tokens=64 - prompt + 1), 400, param="messages",
                         code="context_length_exceeded")
    assert "64" in error["message"]


def test_a_prompt_that_fills_the_context_window_is_a_400(client):
    long = [{"role": "user", "content": "word " * 200}]
    assert_error(client.post("/v1/chat/completions", json={"model": MODEL, "messages": long}), 400,
                 param="messages", code="context_length_exceeded")


def test_unknown_routes_and_methods_have_the_error_shape(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_an_engine_failure_is_a_500_without_internals(tokenizer, answer_ids):
    response = post(client_for(FakeEngine(answer_ids, fail_after=0), tokenizer))
    error = assert_error(response, 500, type_="server_error")
    assert "secret" not in error["message"]
