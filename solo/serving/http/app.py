"""The OpenAI-compatible HTTP surface: one router per endpoint over an `Engine`, and a chat page at `/`.

Everything textual happens here (chat template, detokenization, stop strings, tool-call markup),
so the engine deals in token ids only and a test can hand `build_gateway` a fake one."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from solo.serving.http.chat import chat_router
from solo.serving.http.completions import completions_router
from solo.serving.http.errors import install_error_handlers
from solo.serving.http.service import Admission, Models, ModelService, ServedModel
from solo.serving.metrics import Metrics, RequestCounter, metrics_router
from solo.serving.protocol import (
    ModelList,
)
from solo.serving.security import Guard, Limits, TokenRateLimiter

PAGE_DIR = Path(__file__).parent / "static"  # the chat page: index.html and what it loads, shipped in the wheel
# The page loads nothing from anywhere else, so it works offline; the browser is told to hold it to that.
PAGE_POLICY = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return router


def models_router(models: Models) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[service.model_card() for service in models.by_name.values()])

    return router


def page_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    return router


def build_gateway(served: Sequence[ServedModel], *, max_new_tokens: int, limits: Limits | None = None,
                  clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The API app over several models, routed by each request's `model`. `max_new_tokens` is the
    completion budget of a request that sets none (capped by what is left of the context window); `clock`
    is the one the rate limits count minutes by."""
    names = [model.name for model in served]
    if not served or len(set(names)) < len(names):
        raise ValueError(f"models to serve need distinct names, not {names}")
    limits = limits or Limits()
    metrics = Metrics(names, max_model_len=max(model.engine.max_context for model in served))
    # One bound for the whole gateway (it guards its memory), and one account of tokens per caller.
    admission = Admission(limits.max_queue, TokenRateLimiter(limits.rate_limit_tpm, clock))
    models = Models([ModelService(m.engine, m.tokenizer, m.name, max_new_tokens, metrics, admission, m.parent,
                                  m.tool_parser) for m in served])
    app = FastAPI(title="solo", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(health_router())
    in_flight = lambda: {name: admission.in_flight[name] for name in names}  # noqa: E731
    app.include_router(metrics_router(metrics, models.loads, in_flight))
    app.include_router(models_router(models))
    app.include_router(chat_router(models))
    app.include_router(completions_router(models))
    app.include_router(page_router())
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")  # open to all: security.OPEN_PREFIXES
    # Added last, run first: count every answer, the guard's refusals included. With one model,
    # every request is about it, refused or not.
    app.add_middleware(Guard, limits=limits, clock=clock)
    app.add_middleware(RequestCounter, metrics=metrics, unattributed=names[0] if len(names) == 1 else "",
                       endpoints={"/v1/models", "/v1/chat/completions", "/v1/completions"})
    return app
