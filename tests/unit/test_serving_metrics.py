"""`/metrics` of a gateway over the scripted fake engine, parsed as Prometheus parses it: vLLM's names,
types, buckets and `model_name` label, solo's own series beside them, and tokens per API key name."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from solo.serving.engine import SamplingParams
from solo.serving.http.app import build_gateway
from solo.serving.http.service import Admission, Admitted, ModelService, ServedModel
from solo.serving.metrics import GenerationMeter, Metrics
from solo.serving.security import Limits, TokenRateLimiter, digest
from solo.tokens.tokenizer import END_OF_TURN
from tests.api import MODEL, USER, events
from tests.fakes import FakeEngine

VLLM = {  # name: type, as vllm/v1/metrics/loggers.py defines them
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}
SOLO = {"solo_requests": "counter", "solo_requests_in_flight": "gauge", "solo_api_key_prompt_tokens": "counter",
        "solo_api_key_generation_tokens": "counter"}
ANSWER = "Hi there"


def scripted(tokenizer) -> FakeEngine:
    return FakeEngine([*tokenizer.encode(ANSWER, add_special_tokens=False),
                       tokenizer.convert_tokens_to_ids(END_OF_TURN)])


class Scrape:
    """One `/metrics` exposition, parsed by prometheus_client's parser."""

    def __init__(self, text: str):
        # (prometheus_client writes each counter's start time as a gauge family of its own: not ours to check.)
        self.families = {family.name: family for family in text_string_to_metric_families(text)
                         if not family.name.endswith("_created")}
        self.values = defaultdict(float)
        for family in self.families.values():
            for sample in family.samples:
                self.values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value

    def __call__(self, sample: str, **labels) -> float:
        key = (sample, tuple(sorted(labels.items())))
        assert key in self.values, f"no sample {sample}{labels}"
        return self.values[key]


def scrape(client: TestClient, **headers) -> Scrape:
    return Scrape(client.get("/metrics", headers=headers).text)


def test_metrics_have_vllms_names_types_buckets_and_model_name_label(tokenizer):
    client = TestClient(build_gateway([ServedModel(MODEL, scripted(tokenizer), tokenizer)], max_new_tokens=64),
                        raise_server_exceptions=False)
    whole = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json()["usage"]
    streamed = events(client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}))[-2]["usage"]
    assert whole == streamed
    client.post("/v1/chat/completions", json={"model": "nope", "messages": USER})
    metrics = scrape(client)

    for name, kind in {**VLLM, **SOLO}.items():
        assert metrics.families[name].type == kind, name
    assert not [n for n in metrics.families if not n.startswith(("vllm:", "solo_"))], "nothing but these"
    assert not [n for n in metrics.families if n.startswith("solo_") and n not in SOLO], "vLLM's names replaced them"
    for family in metrics.families.values():
        assert all(s.labels.get("model_name") == MODEL for s in family.samples), family.name

    model = {"model_name": MODEL}
    prompt, generated = whole["prompt_tokens"], whole["completion_tokens"]
    assert metrics("vllm:prompt_tokens_total", **model) == 2 * prompt
    assert metrics("vllm:generation_tokens_total", **model) == 2 * generated
    assert metrics("vllm:request_success_total", finished_reason="stop", **model) == 2
    for reason in ("length", "abort", "error"):  # there, at 0, before any request ends so
        assert metrics("vllm:request_success_total", finished_reason=reason, **model) == 0
    assert metrics("vllm:request_prompt_tokens_sum", **model) == 2 * prompt
    assert metrics("vllm:request_generation_tokens_sum", **model) == 2 * generated
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                      "vllm:request_time_per_output_token_seconds", "vllm:request_prompt_tokens"):
        assert metrics(f"{histogram}_count", **model) == 2, histogram
    # The fake engine sends a token a message: every token after each answer's first has its interval.
    for histogram in ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds"):
        assert metrics(f"{histogram}_count", **model) == 2 * (generated - 1), histogram
    assert metrics("vllm:num_requests_running", **model) == 0 and metrics("vllm:num_requests_waiting", **model) == 0

    def bounds(family: str) -> list[str]:
        return [s.labels["le"] for s in metrics.families[family].samples if s.name.endswith("_bucket")]

    assert bounds("vllm:request_prompt_tokens") == ["1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0",
                                                    "+Inf"], "vLLM's 1-2-5 buckets up to the 256-token window"
    assert bounds("vllm:time_to_first_token_seconds")[:3] == ["0.001", "0.005", "0.01"]
    assert bounds("vllm:e2e_request_latency_seconds")[-2:] == ["7680.0", "+Inf"]

    assert metrics("solo_requests_total", endpoint="/v1/chat/completions", status="200", **model) == 2
    assert metrics("solo_requests_total", endpoint="/v1/chat/completions", status="404", **model) == 1
    assert metrics("solo_requests_in_flight", **model) == 0


def test_how_each_generation_ended_and_its_time_per_token():
    metrics = Metrics(["m"], max_model_len=256)
    now = [0.0]
    meter = GenerationMeter(metrics.series["m"], prompt_tokens=7, clock=lambda: now[0])
    now[0] = 1.0
    meter.arrived(1)  # the first token, alone, one second in
    now[0] = 3.0
    meter.arrived(4)  # then four in one message, two seconds later
    meter.ended("length")
    parsed = Scrape(metrics.exposition({}, {}).decode())
    model = {"model_name": "m"}
    assert parsed("vllm:time_to_first_token_seconds_sum", **model) == 1.0
    assert parsed("vllm:time_per_output_token_seconds_count", **model) == 4
    assert parsed("vllm:time_per_output_token_seconds_bucket", le="0.5", **model) == 4, "2 s over 4 tokens"
    assert parsed("vllm:request_time_per_output_token_seconds_sum", **model) == 0.5
    assert parsed("vllm:e2e_request_latency_seconds_sum", **model) == 3.0
    assert parsed("vllm:request_success_total", finished_reason="length", **model) == 1
    assert (parsed("vllm:prompt_tokens_total", **model), parsed("vllm:generation_tokens_total", **model)) == (7, 5)


@pytest.mark.parametrize("fail_after, read, ended", [
    (None, 1, "abort"),  # the client left after the first piece
    (2, None, "error"),  # the engine failed
])
def test_a_generation_cut_short_counts_as_vllm_says_why(tokenizer, fail_after, read, ended):
    metrics = Metrics(["m"], max_model_len=256)
    service = ModelService(FakeEngine([5, 6, 7, 8], fail_after=fail_after), tokenizer, "m", 64, metrics,
                           Admission(4, TokenRateLimiter(0)))
    async def generate() -> None:
        pieces = service.run([1, 2], SamplingParams(max_tokens=10), [], Admitted(2, lambda prompt, generated: None))
        try:
            for _ in range(read or 10):
                await anext(pieces)
        finally:
            await pieces.aclose()

    if fail_after is None:
        asyncio.run(generate())
    else:
        with pytest.raises(RuntimeError, match="engine exploded"):
            asyncio.run(generate())
    parsed = Scrape(metrics.exposition({}, {}).decode())
    assert {reason: parsed("vllm:request_success_total", finished_reason=reason, model_name="m")
            for reason in ("stop", "length", "abort", "error")} == {
        r: float(r == ended) for r in ("stop", "length", "abort", "error")}


def test_tokens_are_counted_per_api_key_name_never_by_the_key(tokenizer, caplog):
    secret, bare = "sk-alpha-very-secret", "sk-bare-also-secret"
    keys = {digest(secret): "alpha", digest(bare): f"key-{digest(bare)[:8]}"}
    client = TestClient(build_gateway([ServedModel(MODEL, scripted(tokenizer), tokenizer)], max_new_tokens=64,
                                      limits=Limits(api_keys=keys)), raise_server_exceptions=False)
    caplog.set_level(logging.DEBUG)
    alpha, other = {"Authorization": f"Bearer {secret}"}, {"Authorization": f"Bearer {bare}"}
    used = defaultdict(lambda: [0, 0])

    def charge(name: str, usage: dict) -> None:
        used[name][0] += usage["prompt_tokens"]
        used[name][1] += usage["completion_tokens"]

    charge("alpha", client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER},
                                headers=alpha).json()["usage"])
    charge("alpha", events(client.post("/v1/completions", headers=alpha, json={
        "model": MODEL, "prompt": "Once", "n": 2, "stream": True, "stream_options": {"include_usage": True}}))[-2][
        "usage"])
    charge(keys[digest(bare)], client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER},
                                           headers=other).json()["usage"])
    text = client.get("/metrics", headers=alpha).text
    metrics = Scrape(text)
    for name, (prompt, generated) in used.items():
        labels = {"key_name": name, "model_name": MODEL}
        assert metrics("solo_api_key_prompt_tokens_total", **labels) == prompt, name
        assert metrics("solo_api_key_generation_tokens_total", **labels) == generated, name
    assert used["alpha"][1] == 3 * used[keys[digest(bare)]][1], "one answer, then both choices of n=2, charged"
    for key in (secret, bare):
        assert key not in text and not any(key in record.getMessage() for record in caplog.records)

    anonymous = TestClient(build_gateway([ServedModel(MODEL, scripted(tokenizer), tokenizer)], max_new_tokens=64))
    usage = anonymous.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json()["usage"]
    assert scrape(anonymous)("solo_api_key_generation_tokens_total", key_name="anonymous",
                             model_name=MODEL) == usage["completion_tokens"], "without keys, all is `anonymous`'s"


def test_the_same_caller_is_limited_as_its_key_name(tokenizer):
    """Two keys given one name share one account: the name is what is counted and limited."""
    keys = {digest("sk-old"): "ci", digest("sk-new"): "ci"}
    app = build_gateway([ServedModel(MODEL, scripted(tokenizer), tokenizer)], max_new_tokens=64,
                        limits=Limits(api_keys=keys, rate_limit_tpm=5))
    client = TestClient(app, raise_server_exceptions=False)
    first = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER},
                        headers={"Authorization": "Bearer sk-old"})
    assert first.status_code == 200
    again = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER},
                        headers={"Authorization": "Bearer sk-new"})
    assert again.status_code == 429
