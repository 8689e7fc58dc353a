"""Gateway features beyond one chat completion, over the scripted fake engine: /v1/completions, API keys
and their names, rate limits in requests and in tokens, the 503 queue bound, size limits, tool calls and
the chat page's files. (/metrics: test_serving_metrics.py.)"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from solo.errors import SoloError
from solo.serving import grammar
from solo.serving.engine import TokenLogprob
from solo.serving.http.app import build_gateway
from solo.serving.http.service import ServedModel
from solo.serving.security import Limits, RateLimiter, TokenRateLimiter, digest, read_api_keys
from solo.tokens.tokenizer import END_OF_TURN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from tests.api import MODEL, USER, assert_error, events, streamed_calls
from tests.fakes import FakeEngine
from tests.served import samples
from tests.waits import until, wait_until

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def gateway(engine, tokenizer, **limits) -> TestClient:
    app = build_gateway([ServedModel(MODEL, engine, tokenizer)], max_new_tokens=64, limits=Limits(**limits))
    return TestClient(app, raise_server_exceptions=False)


def scripted(tokenizer, text: str) -> FakeEngine:
    return FakeEngine([*tokenizer.encode(text, add_special_tokens=False), tokenizer.convert_tokens_to_ids(END_OF_TURN)])


# ---------------------------------------------------------------- /v1/completions


def test_a_text_completion_takes_the_prompt_as_is(tokenizer):
    engine = scripted(tokenizer, " and then some")
    client = gateway(engine, tokenizer)
    body = client.post("/v1/completions", json={"model": MODEL, "prompt": "Once upon", "max_tokens": 50}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": " and then some", "finish_reason": "stop", "logprobs": None}]
    prompt_ids = tokenizer.encode("Once upon", add_special_tokens=False)
    assert engine.calls[0][0] == prompt_ids, "no chat template around a text completion"
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    # Token ids are a prompt too; with no max_tokens OpenAI's default of 16 applies.
    client.post("/v1/completions", json={"model": MODEL, "prompt": [5, 6, 7]})
    assert engine.calls[1][0] == [5, 6, 7] and engine.calls[1][1].max_tokens == 16


def test_a_streamed_text_completion(tokenizer):
    client = gateway(scripted(tokenizer, " and then some"), tokenizer)
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": "Once", "max_tokens": 50, "stream": True,
                                                    "stream_options": {"include_usage": True}})
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    *chunks, usage = payloads[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == " and then some"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    expected = len(tokenizer.encode(" and then some", add_special_tokens=False)) + 1  # and the stop token
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == expected


@pytest.mark.parametrize("body, status, param, code", [
    ({"model": MODEL}, 400, "prompt", "missing_required_parameter"),
    ({"model": MODEL, "prompt": "x", "echo": True}, 400, "echo", "invalid_value"),
    ({"model": MODEL, "prompt": [1, 10**9]}, 400, "prompt", "invalid_value"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 10_000}, 400, "prompt", "context_length_exceeded"),
    ({"model": "gpt-9", "prompt": "x"}, 404, "model", "model_not_found"),
])
def test_text_completion_errors(tokenizer, body, status, param, code):
    assert_error(gateway(FakeEngine([1]), tokenizer).post("/v1/completions", json=body), status, param=param, code=code)


# ---------------------------------------------------------------- keys, limits, overload


def test_api_keys_are_required_when_configured(tokenizer):
    client = gateway(FakeEngine([1]), tokenizer, api_keys={digest("sk-good"): "ops"})
    assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer sk-bad"}), 401, code="invalid_api_key")
    assert client.get("/v1/models", headers={"Authorization": "Bearer sk-good"}).status_code == 200
    assert client.get("/health").status_code == 200, "probes need no key"


def test_keys_come_from_the_environment_and_a_file_with_their_names_and_are_kept_hashed(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# ops\nsk-file\n\n  ci   sk-ci  \n")
    read = read_api_keys(str(keys), environ={"SOLO_API_KEYS": "sk-a, laptop=sk-b,"})
    assert read == {digest("sk-a"): f"key-{digest('sk-a')[:8]}", digest("sk-b"): "laptop",
                    digest("sk-file"): f"key-{digest('sk-file')[:8]}", digest("sk-ci"): "ci"}
    assert not any("sk-" in text for pair in read.items() for text in pair), "only digests and names are kept"


@pytest.mark.parametrize("file_text, environ, message", [
    ("ci sk-1 extra\n", "", "line 1 of .* has 3 fields: write `NAME KEY` or `KEY`"),
    ("", "laptop=", r"item 1 of \$SOLO_API_KEYS names a key but gives none"),
    ("", "ok=sk-1, sk-2/name=sk-2", r"item 2 of \$SOLO_API_KEYS: a key's name is letters, digits"),
    ("ci sk-3\nops sk-3\n", "", "line 2 of .* gives again the key named 'ci', under another name"),
])
def test_a_mistake_in_the_keys_is_one_line_that_never_shows_a_key(tmp_path, file_text, environ, message):
    keys = tmp_path / "keys"
    keys.write_text(file_text)
    with pytest.raises(SoloError, match=message) as caught:
        read_api_keys(str(keys), environ={"SOLO_API_KEYS": environ})
    assert "sk-" not in str(caught.value)


def test_a_rate_limited_key_gets_a_429_with_retry_after(tokenizer):
    client = gateway(FakeEngine([1]), tokenizer, api_keys={digest("k1"): "one", digest("k2"): "two"}, rate_limit_rpm=2)
    first = {"Authorization": "Bearer k1"}
    assert [client.get("/v1/models", headers=first).status_code for _ in range(2)] == [200, 200]
    response = client.get("/v1/models", headers=first)
    assert_error(response, 429, type_="rate_limit_error", code="rate_limit_exceeded")
    assert int(response.headers["retry-after"]) >= 1
    assert client.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200, "limits are per key"


def test_the_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, clock=lambda: now[0])
    assert all(limiter.retry_after("a") == 0 for _ in range(60))
    assert limiter.retry_after("a") == 1
    now[0] += 1.0
    assert limiter.retry_after("a") == 0 and limiter.retry_after("a") == 1


def test_the_token_limiter_counts_a_sliding_minute_per_caller():
    now = [0.0]
    limiter = TokenRateLimiter(per_minute=100, clock=lambda: now[0])
    limiter.record("a", 60)
    assert limiter.retry_after("a") == 0, "under its limit"
    now[0] = 10.0
    limiter.record("a", 50)
    now[0] = 20.0
    assert limiter.retry_after("a") == 40, "110 used: under again once the 60 of t=0 leave the minute, at t=60"
    assert limiter.retry_after("b") == 0, "limits are per caller"
    now[0] = 60.0
    assert limiter.retry_after("a") == 0
    assert TokenRateLimiter(per_minute=0).retry_after("a") == 0, "0: no limit"


def test_a_key_over_its_tokens_a_minute_gets_a_429_until_its_minute_has_passed(tokenizer):
    now = [1000.0]
    keys = {digest("k1"): "one", digest("k2"): "two"}
    app = build_gateway([ServedModel(MODEL, scripted(tokenizer, "Hi there"), tokenizer)], max_new_tokens=64,
                        limits=Limits(api_keys=keys, rate_limit_tpm=10), clock=lambda: now[0])
    client = TestClient(app, raise_server_exceptions=False)
    one, two = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    stream = {"model": MODEL, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    # Under its limit, a request is let in, however many tokens it then uses; they count when it ends.
    usage = events(client.post("/v1/chat/completions", json=stream, headers=one))[-2]["usage"]
    assert usage["total_tokens"] > 10, "the request alone spends the key's minute"
    refused = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}, headers=one)
    assert_error(refused, 429, type_="rate_limit_error", code="rate_limit_exceeded")
    assert refused.headers["retry-after"] == "60" and "tokens per minute" in refused.json()["error"]["message"]
    assert client.post("/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=one).status_code == 429
    assert client.get("/v1/models", headers=one).status_code == 200, "only generations spend tokens"
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER},
                       headers=two).status_code == 200, "limits are per key"
    now[0] += 59
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}, headers=one).headers[
        "retry-after"] == "1"
    now[0] += 1
    whole = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}, headers=one)
    assert whole.status_code == 200, "admitted again once the minute has passed"
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER},
                       headers=one).status_code == 429, "and a whole answer counts as a streamed one does"


def test_an_oversized_body_is_a_413(tokenizer):
    client = gateway(FakeEngine([1]), tokenizer, max_request_bytes=2048)
    big = [{"role": "user", "content": "x" * 4096}]
    assert_error(client.post("/v1/chat/completions", json={"model": MODEL, "messages": big}), 413)

    def chunked():  # no Content-Length: the cap applies as the body arrives
        yield json.dumps({"model": MODEL, "messages": big}).encode()

    assert_error(client.post("/v1/chat/completions", content=chunked(),
                             headers={"content-type": "application/json"}), 413)


def test_beyond_max_queue_generations_get_a_503(tokenizer):
    class Held(FakeEngine):
        """Generations that wait until released, so that they stay in flight."""

        def __init__(self):
            super().__init__([1, 2])
            self.release = threading.Event()
            self.waiting = 0

        async def generate(self, prompt_ids, params):
            self.waiting += 1
            await until(self.release.is_set, "the test releasing the held generations")
            async for delta in super().generate(prompt_ids, params):
                yield delta

    engine = Held()
    client = gateway(engine, tokenizer, max_queue=2)

    def send():
        return client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})

    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(send) for _ in range(2)]
        wait_until(lambda: engine.waiting == 2, "two generations in flight")
        refused = send()
        engine.release.set()
        assert [f.result().status_code for f in held] == [200, 200]
    assert_error(refused, 503, type_="server_error", code="overloaded")
    assert send().status_code == 200, "the slots came back"


# ---------------------------------------------------------------- tool calls


CALL = f'{TOOL_CALL_OPEN}\n{{"name": "lookup", "arguments": {{"q": "json"}}}}\n{TOOL_CALL_CLOSE}'


def test_a_tool_call_in_the_answer_is_returned_in_openai_shape(tokenizer):
    client = gateway(scripted(tokenizer, "Let me look." + CALL), tokenizer)
    body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "tools": TOOLS}).json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "lookup", "arguments": '{"q": "json"}'}
    # Without tools offered, the same text is plain content.
    plain = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json()
    assert plain["choices"][0]["message"]["content"] == "Let me look." + CALL


def test_a_tool_call_streams(tokenizer):
    client = gateway(scripted(tokenizer, "Ok." + CALL), tokenizer)
    chunks = events(client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "tools": TOOLS,
                                                              "stream": True}))[:-1]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == "Ok."
    (call,) = streamed_calls(chunks)
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "lookup", "arguments": '{"q": "json"}'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_forced_tool_call_is_constrained_and_parsed_from_the_reply(tokenizer):
    arguments = '{"name": "lookup", "arguments": {"q": "json"}}'
    close = tokenizer.convert_tokens_to_ids(TOOL_CALL_CLOSE)
    opening = tokenizer.encode(TOOL_CALL_OPEN + "\n", add_special_tokens=False)
    for choice in ("required", {"type": "function", "function": {"name": "lookup"}}):
        engine = FakeEngine([*tokenizer.encode(arguments, add_special_tokens=False), close])
        client = gateway(engine, tokenizer)
        body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "tools": TOOLS,
                                                         "tool_choice": choice}).json()
        (call,) = body["choices"][0]["message"]["tool_calls"]
        assert call["function"] == {"name": "lookup", "arguments": '{"q": "json"}'}
        assert body["choices"][0]["finish_reason"] == "tool_calls"
        prompt_ids, params = engine.calls[0]
        assert prompt_ids[-len(opening):] == opening, "the call markup opens the reply"
        assert params.stop_token_ids == (close,)
        assert json.loads(params.json_schema)["properties"]["name"] == {"const": "lookup"}
    stream = gateway(FakeEngine([*tokenizer.encode(arguments, add_special_tokens=False), close]), tokenizer).post(
        "/v1/chat/completions", json={"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "required",
                                      "stream": True})
    chunks = [c for c in events(stream) if c != "[DONE]" and c["choices"]]
    assert [c["function"] for c in streamed_calls(chunks)] == [{"name": "lookup", "arguments": '{"q": "json"}'}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_response_format_reaches_the_engine_as_a_schema_and_a_bad_schema_is_a_400(tokenizer):
    engine = scripted(tokenizer, '{"a": 1}')
    client = gateway(engine, tokenizer)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}).json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"a": 1}
    assert json.loads(engine.calls[0][1].json_schema) == schema
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER,
                                              "response_format": {"type": "json_object"}})
    assert json.loads(engine.calls[1][1].json_schema) == {"type": "object"}
    response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}}}})
    assert_error(response, 400, param="response_format", code="invalid_value")


def test_every_tool_schema_is_checked_whatever_the_tool_choice(tokenizer):
    bad = [*TOOLS, {"type": "function", "function": {"name": "broken", "parameters": {"type": "no-such-type"}}}]
    for choice in (None, "auto", "none", "required"):
        engine = scripted(tokenizer, "Hello.")
        response = gateway(engine, tokenizer).post("/v1/chat/completions", json={
            "model": MODEL, "messages": USER, "tools": bad, **({"tool_choice": choice} if choice else {})})
        assert_error(response, 400, param="tools[1].function.parameters", code="invalid_value")
        assert engine.calls == [], "a refused request never reaches the engine"


def test_a_schema_is_compiled_once_however_many_requests_carry_it(tokenizer):
    grammar._schema_problem.cache_clear()
    client = gateway(scripted(tokenizer, "Hello."), tokenizer)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    for _ in range(5):
        assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER,
                                                          "tools": tools}).status_code == 200
    info = grammar._schema_problem.cache_info()
    assert (info.misses, info.hits) == (1, 4)


class Scored(FakeEngine):
    """The fake engine, with made-up log-probabilities on each token when they are asked for."""

    async def generate(self, prompt_ids, params):
        async for delta in super().generate(prompt_ids, params):
            if params.logprobs is not None:
                (token,) = delta.token_ids
                delta = replace(delta,
                                logprobs=[TokenLogprob(token, -0.5, [(token, -0.5), (7, -1.5)][:params.logprobs])])
            yield delta


def test_logprobs_in_chat_and_completions_streamed_and_not(tokenizer):
    text = " and then"
    ids = tokenizer.encode(text, add_special_tokens=False)
    client = gateway(Scored([*ids, tokenizer.convert_tokens_to_ids(END_OF_TURN)]), tokenizer)
    body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "logprobs": True,
                                                     "top_logprobs": 2}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [entry["token"] for entry in content] == [tokenizer.decode([i]) for i in ids], "no entry for the stop token"
    assert bytes(b for entry in content for b in entry["bytes"]).decode() == text
    assert all(e["logprob"] == -0.5 and [t["logprob"] for t in e["top_logprobs"]] == [-0.5, -1.5] for e in content)
    plain = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json()
    assert plain["choices"][0]["logprobs"] is None
    chunks = [c for c in events(client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": USER, "logprobs": True, "stream": True})) if c != "[DONE]"]
    streamed = [e for c in chunks if c["choices"][0].get("logprobs") for e in c["choices"][0]["logprobs"]["content"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in content] and \
        all(not e["top_logprobs"] for e in streamed)
    legacy = client.post("/v1/completions", json={"model": MODEL, "prompt": "Once", "logprobs": 1}).json()
    logprobs = legacy["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == legacy["choices"][0]["text"] == text
    assert logprobs["token_logprobs"] == [-0.5] * len(ids) and len(logprobs["top_logprobs"]) == len(ids)
    assert logprobs["text_offset"][0] == 0 and logprobs["text_offset"][-1] == len(text) - len(logprobs["tokens"][-1])


def test_n_choices_each_from_its_own_generation(tokenizer):
    engine = scripted(tokenizer, " and then")
    client = gateway(engine, tokenizer)
    body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "n": 3, "seed": 10}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {" and then"}
    assert sorted(params.seed for _, params in engine.calls) == [10, 11, 12], "seeded choices stay reproducible"
    one = len(tokenizer.encode(" and then", add_special_tokens=False)) + 1
    assert body["usage"]["completion_tokens"] == 3 * one
    chunks = [c for c in events(client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": USER, "n": 2, "stream": True, "stream_options": {"include_usage": True}}))
        if c != "[DONE]"]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert "".join(c["delta"].get("content") or "" for c in mine) == " and then"
        assert mine[-1]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 2 * one
    text = client.post("/v1/completions", json={"model": MODEL, "prompt": "Once", "n": 2, "max_tokens": 20}).json()
    assert [c["text"] for c in text["choices"]] == [" and then"] * 2
    (in_flight,) = [s.value for s in samples(client.get("/metrics").text) if s.name == "solo_requests_in_flight"]
    assert in_flight == 0, "every choice's admission was given back"


# ---------------------------------------------------------------- the chat page's files


def test_the_chat_page_and_its_files_are_served_to_anyone_and_load_nothing_from_elsewhere(tokenizer):
    client = gateway(FakeEngine([1]), tokenizer, api_keys={digest("sk-good"): "ops"}, rate_limit_rpm=1)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self';"), "the browser holds it to that"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["static/chat.css", "static/chat.js"]
    for asset in assets:  # no key asked, no limit counted: the page must load to ask for the key
        response = client.get(f"/{asset}")
        assert response.status_code == 200 and response.text
        assert not re.search(r"(https?:)?//[\w.-]+\.\w", response.text), f"{asset} reaches outside the server"
    assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
