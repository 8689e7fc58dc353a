"""One served model behind the API: the checks every endpoint shares, its engine's tokens turned into text
pieces, admission, and the answer as JSON or as a stream of server-sent events."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from solo.serving.config import ToolParserName
from solo.serving.detokenize import TextStream
from solo.serving.engine import Engine, EngineLoad, SamplingParams, TokenLogprob
from solo.serving.http.errors import APIError
from solo.serving.logprobs import TokenTexts
from solo.serving.metrics import Metrics
from solo.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    ModelCard,
    SamplingRequest,
    now,
)
from solo.serving.security import Caller, TokenRateLimiter
from solo.serving.tools import tool_format
from solo.tokens.tokenizer import stop_token_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    text: str
    finish_reason: FinishReason | None
    completion_tokens: int  # so far
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens behind this piece, if asked


class Admission:
    """At most `limit` generations in flight at the gateway, whatever their models; one more is a
    503, not a queue that grows until every client times out. None for a caller over its tokens a
    minute: a 429 that says when to come back."""

    def __init__(self, limit: int, tokens: TokenRateLimiter) -> None:
        self.limit = limit
        self.tokens = tokens
        self.in_flight: collections.Counter[str] = collections.Counter()  # by model

    def enter(self, model: str, caller: Caller) -> Callable[[], None]:
        wait = self.tokens.retry_after(caller.limited_as)
        if wait:
            raise APIError(429, f"Rate limit reached for tokens per minute (TPM): limit {self.tokens.per_minute}. "
                                f"Please try again in {wait}s.", type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(wait)})
        if self.in_flight.total() >= self.limit:
            raise APIError(503, "The server is overloaded with requests. Please retry shortly.",
                           type="server_error", code="overloaded")
        self.in_flight[model] += 1
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self.in_flight[model] -= 1

        return leave


class Admitted:
    """A generation request let in at the gateway. It holds its slot and adds up the tokens its choices
    generate until it leaves; then the key that sent it is charged what it used, as its `usage` says (the
    prompt once a token came of it: a request that failed before any did not cost its prompt's prefill)."""

    def __init__(self, prompt_tokens: int, settle: Callable[[int, int], None]) -> None:
        self.prompt_tokens = prompt_tokens
        self.generated = 0
        self._settle: Callable[[int, int], None] | None = settle

    def leave(self) -> None:
        """Give the slot back and settle the account; once, however the request ended."""
        if self._settle is not None:
            settle, self._settle = self._settle, None
            settle(self.prompt_tokens if self.generated else 0, self.generated)


@dataclass(frozen=True)
class ServedModel:
    """A model as the API names it. An adapter's engine is its base's with the adapter applied,
    and it speaks through the base's tokenizer."""

    name: str
    engine: Engine
    tokenizer: PreTrainedTokenizerBase
    parent: str | None = None  # a LoRA adapter's base model
    tool_parser: ToolParserName | None = None  # its tool-call markup; None: the chat template's


class ModelService:
    """One model behind the API: request checks every endpoint shares, and the engine's tokens
    turned into text pieces, measured."""

    def __init__(self, engine: Engine, tokenizer: PreTrainedTokenizerBase, model_name: str, max_new_tokens: int,
                 metrics: Metrics, admission: Admission, parent: str | None = None,
                 tool_parser: ToolParserName | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.parent = parent
        self.max_new_tokens = max_new_tokens
        self.metrics = metrics
        self.admission = admission
        self.stop_token_ids = tuple(stop_token_ids(tokenizer))
        self.tool_format = tool_format(tokenizer.chat_template, tool_parser)  # None: the model writes no calls
        self.texts = TokenTexts(tokenizer)
        self.created = now()

    def admit(self, caller: Caller, prompt_tokens: int) -> Admitted:
        """Let a generation request of `caller` in (or refuse it): it leaves when its last choice has ended."""
        release = self.admission.enter(self.model_name, caller)

        def settle(prompt_tokens: int, generated: int) -> None:
            release()
            self.metrics.key_usage(caller.key_name, self.model_name, prompt_tokens, generated)
            self.admission.tokens.record(caller.limited_as, prompt_tokens + generated)

        return Admitted(prompt_tokens, settle)

    def model_card(self) -> ModelCard:
        return ModelCard(id=self.model_name, created=self.created, max_model_len=self.engine.max_context,
                         parent=self.parent)

    def sampling(self, request: SamplingRequest, prompt_ids: list[int], asked: int | None,
                 prompt_param: str) -> SamplingParams:
        window = self.engine.max_context
        room = window - len(prompt_ids)
        if room < 1 or (asked is not None and asked > room):
            wanted = (f"{len(prompt_ids) + asked} tokens ({len(prompt_ids)} in the {prompt_param}, {asked} in the "
                      "completion)" if asked else
                      f"{len(prompt_ids)} tokens in the {prompt_param}, which leaves no room for a completion")
            raise APIError(400, f"This model's maximum context length is {window} tokens. However, you requested "
                                f"{wanted}. Please reduce the length of the {prompt_param} or completion.",
                           param=prompt_param, code="context_length_exceeded")
        return SamplingParams(
            max_tokens=asked or min(self.max_new_tokens, room),
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            stop_token_ids=self.stop_token_ids,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logprobs=request.wanted_logprobs,
        )

    async def each_choice(self, choice: Callable, params: SamplingParams, n: int, admitted: Admitted) -> list:
        """`choice(index, params)` for each of the n choices a request asked for, together; the
        request's admission is held until the last has ended, however they end."""
        try:
            if n == 1:
                return [await choice(0, params)]
            async with asyncio.TaskGroup() as group:  # one failing cancels the others
                tasks = [group.create_task(choice(i, p)) for i, p in enumerate(self.fan_out(params, n))]
            return [task.result() for task in tasks]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            admitted.leave()

    async def each_choice_streamed(self, choice: Callable, params: SamplingParams, n: int,
                                   admitted: Admitted) -> AsyncIterator:
        """The chunks of the n choices' streams, as each produces them."""
        try:
            async with aclosing(merge([choice(i, p) for i, p in enumerate(self.fan_out(params, n))])) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            admitted.leave()

    @staticmethod
    def fan_out(params: SamplingParams, n: int) -> list[SamplingParams]:
        # A seeded request stays reproducible with n > 1: choice i samples with seed + i.
        return [params if params.seed is None else replace(params, seed=params.seed + i) for i in range(n)]

    async def run(self, prompt_ids: list[int], params: SamplingParams, stop_strings: list[str],
                  admitted: Admitted) -> AsyncIterator[Piece]:
        """Text as the engine produces it; stops the engine at a stop string. Measured, and its tokens
        counted on the request's account."""
        meter, produced = self.metrics.generation(self.model_name, len(prompt_ids)), 0
        hidden = set(self.stop_token_ids) | set(params.stop_token_ids)
        text = TextStream(self.tokenizer, hidden, stop_strings)
        ended = "abort"  # unless it finishes or fails: whoever read it stopped (a client that left)
        try:
            async with aclosing(self.engine.generate(prompt_ids, params)) as deltas:
                async for delta in deltas:
                    meter.arrived(len(delta.token_ids))
                    admitted.generated += len(delta.token_ids)
                    produced += len(delta.token_ids)
                    piece = text.push(delta.token_ids, final=delta.finish_reason is not None)
                    finish = "stop" if text.stopped else delta.finish_reason
                    ended = finish or ended
                    yield Piece(piece, finish, produced,
                                [lp for lp in delta.logprobs or [] if lp.token_id not in hidden])
                    if finish is not None:
                        return
            raise RuntimeError("the engine ended a generation without a finish reason")
        except Exception:
            ended = "error"
            raise
        finally:
            meter.ended(ended)


async def merge(streams: list[AsyncIterator]) -> AsyncIterator:
    """Items of several async iterators as they come; an error in one ends all of them."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    ended = object()

    async def pump(stream: AsyncIterator) -> None:
        try:
            async with aclosing(stream) as items:
                async for item in items:
                    await queue.put(item)
            await queue.put(ended)
        except Exception as error:
            await queue.put(error)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is ended:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Models:
    """The served models by API name: a request's `model` picks one, or is a 404."""

    def __init__(self, services: list[ModelService]):
        self.by_name = {service.model_name: service for service in services}

    def get(self, name: str, http: Request) -> ModelService:
        service = self.by_name.get(name)
        if service is None:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        http.state.model = name  # the request counts under this model in /metrics
        return service

    async def loads(self) -> dict[str, EngineLoad]:
        # An adapter runs on its base's engine: the base's load is its load.
        engines = [s for s in self.by_name.values() if s.parent is None]
        return dict(zip([s.model_name for s in engines], await asyncio.gather(*(s.engine.load() for s in engines))))


def _sse(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


async def _sse_stream(events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield _sse(event)
    except Exception:
        # The status line has gone out already: the error travels in the stream instead.
        log.exception("generation failed mid-stream")
        yield _sse(ErrorResponse(error=ErrorDetail(message="The server had an error while generating.",
                                                   type="server_error")))
    yield "data: [DONE]\n\n"


def _event_stream(events: AsyncIterator[BaseModel]) -> StreamingResponse:
    return StreamingResponse(_sse_stream(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class GenerationService(Protocol):
    """An endpoint's request handling (solo.serving.http.chat, solo.serving.http.completions)."""

    model: ModelService

    def prepare(self, request) -> tuple[list[int], SamplingParams]: ...
    async def complete(self, request, prompt_ids: list[int], params: SamplingParams,
                       admitted: Admitted) -> BaseModel: ...
    def stream(self, request, prompt_ids: list[int], params: SamplingParams,
               admitted: Admitted) -> AsyncIterator[BaseModel]: ...


async def respond(service: GenerationService, request: ChatCompletionRequest | CompletionRequest,
                  http: Request) -> BaseModel | StreamingResponse:
    """The answer to `request`, whole or as server-sent events, for the caller the guard named in `http`'s
    state; a bad request fails here, while a status can still be sent."""
    prompt_ids, params = service.prepare(request)  # errors are raised here, while a status can still be sent
    admitted = service.model.admit(http.state.caller, len(prompt_ids))
    if request.stream:
        return _event_stream(service.stream(request, prompt_ids, params, admitted))
    return await service.complete(request, prompt_ids, params, admitted)
