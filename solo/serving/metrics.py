"""Prometheus metrics of the served models, named, typed, bucketed and labelled (`model_name`) as vLLM's, on a
registry of the app's own.

Dashboards built for vLLM (its own Grafana dashboard among them) read `vllm:*` series by `model_name`: each one
solo measures has vLLM's name and meaning. They are measured at the gateway, the one place every request of
every replica passes. What vLLM has no name for (requests by endpoint and HTTP status, generations in flight at
the gateway, tokens per API key) is `solo_*`, labelled `model_name` too. A registry per app (not
prometheus_client's global one) lets tests build many gateways in one process, and keeps `/metrics` to what
this server measured.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from solo.serving.engine import EngineLoad

MODEL_LABEL = "model_name"
# How a generation ended, as vLLM's `finished_reason` label says it: a stop token or string, max_tokens or
# the context window, the client leaving, the engine failing.
FINISHED_REASONS = ("stop", "length", "abort", "error")
# vLLM's buckets, so that a dashboard's quantiles mean the same over either server.
TIME_TO_FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                               10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TIME_PER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                          20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)


def token_count_buckets(max_model_len: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, … up to `max_model_len`, as vLLM buckets its per-request token counts."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


class ModelSeries:
    """One model's series, bound to its label once: a generation touches them for every message it streams."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.prompt_tokens = metrics.prompt_tokens.labels(model)
        self.generation_tokens = metrics.generation_tokens.labels(model)
        self.success = {reason: metrics.request_success.labels(model, reason) for reason in FINISHED_REASONS}
        self.request_prompt_tokens = metrics.request_prompt_tokens.labels(model)
        self.request_generation_tokens = metrics.request_generation_tokens.labels(model)
        self.time_to_first_token = metrics.time_to_first_token.labels(model)
        self.time_per_output_token = metrics.time_per_output_token.labels(model)
        self.inter_token_latency = metrics.inter_token_latency.labels(model)
        self.request_time_per_output_token = metrics.request_time_per_output_token.labels(model)
        self.e2e_latency = metrics.e2e_latency.labels(model)


class GenerationMeter:
    """One generation's measurements, taken as its tokens reach the gateway.

    Tokens that arrive in one message (the replica sends `stream_interval` at a time) share the interval since
    the message before evenly, so the per-token histograms count every token after the first message, as
    vLLM's do, and sum to the time spent decoding them."""

    def __init__(self, series: ModelSeries, prompt_tokens: int, clock: Callable[[], float] = time.perf_counter):
        self.series, self.prompt_tokens, self.clock = series, prompt_tokens, clock
        self.started = clock()
        self.first: float | None = None  # when the first message arrived
        self.last = self.started
        self.tokens = self.tokens_in_first = 0

    def arrived(self, tokens: int) -> None:
        if not tokens:
            return
        now = self.clock()
        if self.first is None:
            self.first, self.tokens_in_first = now, tokens
            self.series.time_to_first_token.observe(now - self.started)
            self.series.prompt_tokens.inc(self.prompt_tokens)  # prefilled now, as vLLM counts it
        else:
            per_token = (now - self.last) / tokens
            for _ in range(tokens):
                self.series.time_per_output_token.observe(per_token)
                self.series.inter_token_latency.observe(per_token)
        self.last = now
        self.tokens += tokens
        self.series.generation_tokens.inc(tokens)

    def ended(self, reason: str) -> None:
        """`reason`: one of FINISHED_REASONS."""
        self.series.success[reason].inc()
        self.series.e2e_latency.observe(self.clock() - self.started)
        self.series.request_prompt_tokens.observe(self.prompt_tokens)
        self.series.request_generation_tokens.observe(self.tokens)
        decoded = self.tokens - self.tokens_in_first
        if self.first is not None and decoded > 0:
            self.series.request_time_per_output_token.observe((self.last - self.first) / decoded)


class Metrics:
    def __init__(self, models: list[str], max_model_len: int) -> None:
        """`models`: every served name, whose series exist (at 0) from the start, as vLLM's do; `max_model_len`:
        the longest context window, the top of the token-count buckets."""
        self.registry = registry = CollectorRegistry()
        model, counts = [MODEL_LABEL], token_count_buckets(max_model_len)
        # vLLM's, as vllm/v1/metrics/loggers.py defines them.
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", model,
                             registry=registry)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", model,
                             registry=registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", model,
                                     registry=registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", model,
                                         registry=registry)
        self.request_success = Counter("vllm:request_success", "Count of successfully processed requests.",
                                       [MODEL_LABEL, "finished_reason"], registry=registry)
        self.request_prompt_tokens = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                               model, buckets=counts, registry=registry)
        self.request_generation_tokens = Histogram("vllm:request_generation_tokens",
                                                   "Number of generation tokens processed.", model, buckets=counts,
                                                   registry=registry)
        self.time_to_first_token = Histogram("vllm:time_to_first_token_seconds",
                                             "Histogram of time to first token in seconds.", model,
                                             buckets=TIME_TO_FIRST_TOKEN_BUCKETS, registry=registry)
        self.time_per_output_token = Histogram("vllm:time_per_output_token_seconds",
                                               "Histogram of time per output token in seconds.", model,
                                               buckets=TIME_PER_TOKEN_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram("vllm:inter_token_latency_seconds",
                                             "Histogram of inter-token latency in seconds.", model,
                                             buckets=TIME_PER_TOKEN_BUCKETS, registry=registry)
        self.request_time_per_output_token = Histogram("vllm:request_time_per_output_token_seconds",
                                                       "Histogram of time_per_output_token_seconds per request.",
                                                       model, buckets=TIME_PER_TOKEN_BUCKETS, registry=registry)
        self.e2e_latency = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                                     model, buckets=REQUEST_LATENCY_BUCKETS, registry=registry)
        # solo's own.
        self.requests = Counter("solo_requests", "HTTP requests by endpoint and status.",
                                [MODEL_LABEL, "endpoint", "status"], registry=registry)
        self.in_flight = Gauge("solo_requests_in_flight", "Generation requests admitted by the gateway.", model,
                               registry=registry)
        self.key_prompt_tokens = Counter("solo_api_key_prompt_tokens", "Prompt tokens of each API key's requests.",
                                         ["key_name", MODEL_LABEL], registry=registry)
        self.key_generation_tokens = Counter("solo_api_key_generation_tokens",
                                             "Tokens generated for each API key's requests.",
                                             ["key_name", MODEL_LABEL], registry=registry)
        self.series = {name: ModelSeries(self, name) for name in models}

    def generation(self, model: str, prompt_tokens: int) -> GenerationMeter:
        return GenerationMeter(self.series[model], prompt_tokens)

    def request(self, model: str, endpoint: str, status: int) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()

    def key_usage(self, key_name: str, model: str, prompt_tokens: int, generation_tokens: int) -> None:
        """What one request used, as its `usage` says, on the account of the API key that sent it."""
        self.key_prompt_tokens.labels(key_name, model).inc(prompt_tokens)
        self.key_generation_tokens.labels(key_name, model).inc(generation_tokens)

    def exposition(self, loads: dict[str, EngineLoad], in_flight: dict[str, int]) -> bytes:
        """`loads`: of each model that has an engine of its own (an adapter shares its base's)."""
        for model, load in loads.items():
            self.waiting.labels(model).set(load.waiting)
            self.running.labels(model).set(load.running)
        for model, count in in_flight.items():
            self.in_flight.labels(model).set(count)
        return generate_latest(self.registry)


def metrics_router(metrics: Metrics, loads: Callable[[], Awaitable[dict[str, EngineLoad]]],
                   in_flight: Callable[[], dict[str, int]]) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics")
    async def scrape() -> Response:
        return Response(metrics.exposition(await loads(), in_flight()), media_type=CONTENT_TYPE_LATEST)

    return router


class RequestCounter:
    """ASGI middleware counting every `/v1/` response by model and status, refusals by the guard
    included. A route names the model it served in `request.state.model`; a request no model
    answered (refused, unknown model, the list) counts under `unattributed`."""

    def __init__(self, app, metrics: Metrics, endpoints: set[str], unattributed: str) -> None:
        self.app, self.metrics = app, metrics
        self.endpoints = endpoints  # others count as "other": a label per path a client invents would not do
        self.unattributed = unattributed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = 500  # if the app fails before it answers
        state = scope.setdefault("state", {})

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.request(state.get("model", self.unattributed),
                                 scope["path"] if scope["path"] in self.endpoints else "other", status)
