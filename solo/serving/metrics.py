"""Prometheus metrics of the served models, labelled by model, on a registry of the app's own.

A registry per app (not prometheus_client's global one) lets tests build many gateways in one
process, and keeps `/metrics` to what this server measured. Names follow vLLM's where they overlap.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from solo.serving.engine import EngineLoad

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.requests = Counter("solo_requests", "HTTP requests by endpoint and status.",
                                ["model", "endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("solo_prompt_tokens", "Prompt tokens processed.", labels, registry=self.registry)
        self.completion_tokens = Counter("solo_generation_tokens", "Tokens generated.", labels,
                                         registry=self.registry)
        self.ttft = Histogram("solo_time_to_first_token_seconds", "From request to first generated token.", labels,
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("solo_e2e_request_latency_seconds", "From request to last generated token.",
                                 labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("solo_requests_in_flight", "Generation requests admitted by the gateway.", labels,
                               registry=self.registry)
        self.waiting = Gauge("solo_num_requests_waiting", "Requests queued in the engine.", labels,
                             registry=self.registry)
        self.running = Gauge("solo_num_requests_running", "Requests the engine is decoding.", labels,
                             registry=self.registry)

    def request(self, model: str, endpoint: str, status: int) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()

    def generation(self, model: str, started: float, first_token: float | None, prompt_tokens: int,
                   completion_tokens: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.completion_tokens.labels(model).inc(completion_tokens)
        if first_token is not None:
            self.ttft.labels(model).observe(first_token - started)
        self.latency.labels(model).observe(time.perf_counter() - started)

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
