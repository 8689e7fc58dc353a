"""Prometheus metrics of one served model, on a registry of the app's own.

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
    def __init__(self, model: str) -> None:
        self.model = model
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

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()

    def generation(self, started: float, first_token: float | None, prompt_tokens: int,
                   completion_tokens: int) -> None:
        self.prompt_tokens.labels(self.model).inc(prompt_tokens)
        self.completion_tokens.labels(self.model).inc(completion_tokens)
        if first_token is not None:
            self.ttft.labels(self.model).observe(first_token - started)
        self.latency.labels(self.model).observe(time.perf_counter() - started)

    def exposition(self, load: EngineLoad, in_flight: int) -> bytes:
        self.waiting.labels(self.model).set(load.waiting)
        self.running.labels(self.model).set(load.running)
        self.in_flight.labels(self.model).set(in_flight)
        return generate_latest(self.registry)


def metrics_router(metrics: Metrics, load: Callable[[], Awaitable[EngineLoad]],
                   in_flight: Callable[[], int]) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics")
    async def scrape() -> Response:
        return Response(metrics.exposition(await load(), in_flight()), media_type=CONTENT_TYPE_LATEST)

    return router


class RequestCounter:
    """ASGI middleware counting every `/v1/` response by status, refusals by the guard included."""

    def __init__(self, app, metrics: Metrics, endpoints: set[str]) -> None:
        self.app, self.metrics = app, metrics
        self.endpoints = endpoints  # others count as "other": a label per path a client invents would not do

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = 500  # if the app fails before it answers

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.request(scope["path"] if scope["path"] in self.endpoints else "other", status)
