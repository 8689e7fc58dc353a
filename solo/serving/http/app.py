"""The OpenAI-compatible HTTP surface: one router per endpoint over an `Engine`.

Everything textual happens here (chat template, detokenization, stop strings, tool-call markup),
so the engine deals in token ids only and a test can hand `build_gateway` a fake one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedTokenizerBase

from solo.serving.engine import Engine, EngineLoad, SamplingParams, TokenLogprob
from solo.serving.logprobs import TokenTexts
from solo.serving.metrics import Metrics, RequestCounter, metrics_router
from solo.serving.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatFinishReason,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    ModelCard,
    ModelList,
    Tool,
    ToolCallDelta,
    Usage,
    SamplingRequest,
    completion_id,
    now,
)
from solo.serving.grammar import check_schema
from solo.serving.security import Guard, Limits
from solo.serving.tools import ToolCallStream
from solo.tokens.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, render_chat, stop_token_ids

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- errors


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.detail).model_dump(), status_code=self.status)


_UNION_MEMBER_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _param(loc: tuple) -> str | None:
    # Pydantic puts the union member it tried into a location ('str', 'list[TextPart]',
    # 'NamedToolChoice'); OpenAI's `param` names fields and indices only.
    parts = [str(p) for p in loc if isinstance(p, int) or (
        p != "body" and p.isidentifier() and p.islower() and p not in _UNION_MEMBER_NAMES)]
    return ".".join(parts) or None


def _validation_error(exc: RequestValidationError) -> APIError:
    """OpenAI names one offending parameter per error: report the most specific one."""
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    kind, param = first["type"], _param(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if kind == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request: "
                             f"{first.get('ctx', {}).get('error', message)}")
    if param is None:
        return APIError(400, "The request body must be a JSON object, sent as Content-Type: application/json.")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value"
    return APIError(400, f"Invalid value for '{param}': {message}.", param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as an OpenAI error body; none leaves as a stack trace."""

    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, "The server had an error while processing your request.",
                        type="server_error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


# ---------------------------------------------------------------- text out of tokens


class TextStream:
    """Token ids in, text deltas out: the deltas concatenate to the decode of every id that is not
    a stop token, a delta never ends inside a UTF-8 character, and a stop string is cut off
    (text that might begin one is held back until it is known not to)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_token_ids: set[int], stop_strings: list[str]):
        self._tokenizer = tokenizer
        self._hidden = stop_token_ids
        self._stops = stop_strings
        self._hold = max((len(s) for s in stop_strings), default=1) - 1
        self._ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] were already turned into text
        self._pending = ""  # decoded but not yet emitted: it may start a stop string
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_ids: list[int], final: bool) -> str:
        """Text to emit now; `final` flushes what is held back. After a stop string, nothing."""
        if self.stopped:
            return ""
        self._ids.extend(t for t in token_ids if t not in self._hidden)
        # Re-decoding from the previous boundary lets a token's bytes join the ones before it.
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if final or not text.endswith("\ufffd"):  # U+FFFD at the end: a character still incomplete
            self._pending += text[len(done):]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[:min(hits)], ""
            return out
        cut = len(self._pending) if final else max(0, len(self._pending) - self._hold)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class Piece:
    text: str
    finish_reason: FinishReason | None
    completion_tokens: int  # so far
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens behind this piece, if asked


class Admission:
    """At most `limit` generations in flight at the gateway, whatever their models; one more is a
    503, not a queue that grows until every client times out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: collections.Counter[str] = collections.Counter()  # by model

    def enter(self, model: str) -> Callable[[], None]:
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


@dataclass(frozen=True)
class ServedModel:
    """A model as the API names it. An adapter's engine is its base's with the adapter applied,
    and it speaks through the base's tokenizer."""

    name: str
    engine: Engine
    tokenizer: PreTrainedTokenizerBase
    parent: str | None = None  # a LoRA adapter's base model


class ModelService:
    """One model behind the API: request checks every endpoint shares, and the engine's tokens
    turned into text pieces, measured."""

    def __init__(self, engine: Engine, tokenizer: PreTrainedTokenizerBase, model_name: str, max_new_tokens: int,
                 metrics: Metrics, admission: Admission, parent: str | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.parent = parent
        self.max_new_tokens = max_new_tokens
        self.metrics = metrics
        self.admission = admission
        self.stop_token_ids = tuple(stop_token_ids(tokenizer))
        self.texts = TokenTexts(tokenizer)
        self.created = now()

    def admit(self) -> Callable[[], None]:
        """Count a generation of this model in flight (or refuse it); call what it returns when it ends."""
        return self.admission.enter(self.model_name)

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

    async def each_choice(self, choice: Callable, params: SamplingParams, n: int, leave: Callable[[], None]) -> list:
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
            leave()

    async def each_choice_streamed(self, choice: Callable, params: SamplingParams, n: int,
                                   leave: Callable[[], None]) -> AsyncIterator:
        """The chunks of the n choices' streams, as each produces them."""
        try:
            async with aclosing(merge([choice(i, p) for i, p in enumerate(self.fan_out(params, n))])) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            leave()

    @staticmethod
    def fan_out(params: SamplingParams, n: int) -> list[SamplingParams]:
        # A seeded request stays reproducible with n > 1: choice i samples with seed + i.
        return [params if params.seed is None else replace(params, seed=params.seed + i) for i in range(n)]

    async def run(self, prompt_ids: list[int], params: SamplingParams, stop_strings: list[str]
                  ) -> AsyncIterator[Piece]:
        """Text as the engine produces it; stops the engine at a stop string."""
        started, first, produced = time.perf_counter(), None, 0
        hidden = set(self.stop_token_ids) | set(params.stop_token_ids)
        text = TextStream(self.tokenizer, hidden, stop_strings)
        try:
            async with aclosing(self.engine.generate(prompt_ids, params)) as deltas:
                async for delta in deltas:
                    first = first or time.perf_counter()
                    produced += len(delta.token_ids)
                    piece = text.push(delta.token_ids, final=delta.finish_reason is not None)
                    finish = "stop" if text.stopped else delta.finish_reason
                    yield Piece(piece, finish, produced, [lp for lp in delta.logprobs or [] if lp.token_id not in hidden])
                    if finish is not None:
                        return
            raise RuntimeError("the engine ended a generation without a finish reason")
        finally:
            self.metrics.generation(self.model_name, started, first, len(prompt_ids), produced)


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


# ---------------------------------------------------------------- chat completions


class ChatService:
    """A chat request becomes prompt ids and sampling parameters; the engine's tokens become an
    assistant message (tool calls parsed out when tools were offered) or a stream of chunks."""

    def __init__(self, model: ModelService):
        self.model = model

    def prepare(self, request: ChatCompletionRequest) -> tuple[list[int], SamplingParams]:
        tokenizer = self.model.tokenizer
        prompt_ids, _ = render_chat(tokenizer, request.template_messages(), request.template_tools(),
                                    add_generation_prompt=True)
        if request.forced_tools:
            # The reply opens with the call marker (given, not sampled), then JSON naming one of the
            # tools with arguments its schema allows, then the closing marker, which ends it.
            prompt_ids = [*prompt_ids, tokenizer.convert_tokens_to_ids(TOOL_CALL_OPEN)]
            params = self.model.sampling(request, prompt_ids, request.requested_max_tokens, "messages")
            schema = _constraint(call_schema(request.forced_tools), "tools")
            return prompt_ids, replace(params, json_schema=schema,
                                       stop_token_ids=(tokenizer.convert_tokens_to_ids(TOOL_CALL_CLOSE),))
        params = self.model.sampling(request, prompt_ids, request.requested_max_tokens, "messages")
        schema = request.response_format.output_schema() if request.response_format else None
        if schema is not None:
            params = replace(params, json_schema=_constraint(schema, "response_format"))
        return prompt_ids, params

    async def complete(self, request: ChatCompletionRequest, prompt_ids: list[int], params: SamplingParams,
                       leave: Callable[[], None]) -> ChatCompletionResponse:
        async def choice(index: int, params: SamplingParams) -> tuple[Choice, int]:
            pieces = [p async for p in self.model.run(prompt_ids, params, request.stop_strings)]
            text, finish = "".join(p.text for p in pieces), pieces[-1].finish_reason
            if request.forced_tools:  # the markers were the prompt's and the stop token: parse as if written
                text = TOOL_CALL_OPEN + text + (TOOL_CALL_CLOSE if finish == "stop" else "")
            content, calls = text, None
            if request.parses_tool_calls:
                parsed = ToolCallStream().push(text, final=True)
                content, calls = parsed.content, parsed.calls or None
            logprobs = self.model.texts.chat([lp for p in pieces for lp in p.logprobs]) if request.logprobs else None
            return Choice(index=index, message=AssistantMessage(content=content or (None if calls else ""),
                                                                tool_calls=calls),
                          finish_reason=_chat_finish(finish, bool(calls)), logprobs=logprobs), \
                pieces[-1].completion_tokens

        choices = await self.model.each_choice(choice, params, request.n or 1, leave)
        return ChatCompletionResponse(
            id=completion_id(), created=now(), model=self.model.model_name, choices=[c for c, _ in choices],
            usage=Usage.of(len(prompt_ids), sum(tokens for _, tokens in choices)))

    async def stream(self, request: ChatCompletionRequest, prompt_ids: list[int], params: SamplingParams,
                     leave: Callable[[], None]) -> AsyncIterator[ChatCompletionChunk]:
        id_, created, name = completion_id(), now(), self.model.model_name
        produced = {}

        async def choice(index: int, params: SamplingParams) -> AsyncIterator[ChatCompletionChunk]:
            pending: list[TokenLogprob] = []  # of tokens whose text is still held back

            def chunk(delta: DeltaMessage, finish: ChatFinishReason | None = None) -> ChatCompletionChunk:
                logprobs = self.model.texts.chat(pending) if request.logprobs and (pending or finish) else None
                pending.clear()
                return ChatCompletionChunk(id=id_, created=created, model=name, choices=[
                    ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)])

            yield chunk(DeltaMessage(role="assistant", content=""))
            tools = ToolCallStream() if request.parses_tool_calls else None
            if request.forced_tools:
                tools.push(TOOL_CALL_OPEN)
            async for piece in self.model.run(prompt_ids, params, request.stop_strings):
                final = piece.finish_reason is not None
                content, calls = piece.text, []
                pending.extend(piece.logprobs)
                if tools is not None:
                    closed = request.forced_tools and piece.finish_reason == "stop"
                    parsed = tools.push(piece.text + (TOOL_CALL_CLOSE if closed else ""), final=final)
                    content, calls = parsed.content, parsed.calls
                if content:
                    yield chunk(DeltaMessage(content=content))
                if calls:
                    first = len(tools.calls) - len(calls)
                    yield chunk(DeltaMessage(tool_calls=[ToolCallDelta(index=first + i, id=call.id, function=call.function)
                                                         for i, call in enumerate(calls)]))
                if final:
                    yield chunk(DeltaMessage(), _chat_finish(piece.finish_reason, bool(tools and tools.calls)))
                    produced[index] = piece.completion_tokens

        async for chunk in self.model.each_choice_streamed(choice, params, request.n or 1, leave):
            yield chunk
        if request.include_usage:
            yield ChatCompletionChunk(id=id_, created=created, model=name, choices=[],
                                      usage=Usage.of(len(prompt_ids), sum(produced.values())))


def call_schema(tools: list[Tool]) -> dict:
    """A call of one of `tools` as the chat template writes it: {"name": ..., "arguments": {...}}."""
    calls = [{"type": "object", "properties": {"name": {"const": tool.function.name},
                                               "arguments": tool.function.parameters or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for tool in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def _constraint(schema: dict, param: str) -> str:
    try:
        return check_schema(schema)
    except ValueError as error:
        raise APIError(400, f"Invalid schema for '{param}': {error}.", param=param, code="invalid_value") from None


def _chat_finish(finish: FinishReason, called: bool) -> ChatFinishReason:
    # OpenAI reports a turn that ended in tool calls as such; one cut off by max_tokens stays "length".
    return "tool_calls" if called and finish == "stop" else finish


# ---------------------------------------------------------------- text completions


class CompletionService:
    """`/v1/completions`: raw text (or token ids) in, no chat template, text out."""

    def __init__(self, model: ModelService):
        self.model = model

    def prepare(self, request: CompletionRequest) -> tuple[list[int], SamplingParams]:
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_ids = self.model.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            vocab = len(self.model.tokenizer)
            if not all(0 <= t < vocab for t in prompt):
                raise APIError(400, f"Invalid value for 'prompt': token ids must be in [0, {vocab}).",
                               param="prompt", code="invalid_value")
            prompt_ids = prompt
        if not prompt_ids:
            raise APIError(400, "Invalid value for 'prompt': it must not be empty.", param="prompt",
                           code="invalid_value")
        return prompt_ids, self.model.sampling(request, prompt_ids, request.requested_max_tokens, "prompt")

    async def complete(self, request: CompletionRequest, prompt_ids: list[int], params: SamplingParams,
                       leave: Callable[[], None]) -> CompletionResponse:
        async def choice(index: int, params: SamplingParams) -> tuple[CompletionChoice, int]:
            pieces = [p async for p in self.model.run(prompt_ids, params, request.stop_strings)]
            logprobs = (self.model.texts.completion([lp for p in pieces for lp in p.logprobs])
                        if request.logprobs is not None else None)
            return CompletionChoice(index=index, text="".join(p.text for p in pieces),
                                    finish_reason=pieces[-1].finish_reason, logprobs=logprobs), \
                pieces[-1].completion_tokens

        choices = await self.model.each_choice(choice, params, request.n or 1, leave)
        return CompletionResponse(
            id=completion_id("cmpl"), created=now(), model=self.model.model_name, choices=[c for c, _ in choices],
            usage=Usage.of(len(prompt_ids), sum(tokens for _, tokens in choices)))

    async def stream(self, request: CompletionRequest, prompt_ids: list[int], params: SamplingParams,
                     leave: Callable[[], None]) -> AsyncIterator[CompletionResponse]:
        id_, created, name = completion_id("cmpl"), now(), self.model.model_name
        produced = {}

        async def choice(index: int, params: SamplingParams) -> AsyncIterator[CompletionResponse]:
            pending: list[TokenLogprob] = []
            offset = 0
            async for piece in self.model.run(prompt_ids, params, request.stop_strings):
                pending += piece.logprobs
                if piece.text or piece.finish_reason:
                    logprobs = None
                    if request.logprobs is not None:
                        logprobs = self.model.texts.completion(pending, offset)
                        offset += sum(len(t) for t in logprobs.tokens)
                        pending = []
                    yield CompletionResponse(id=id_, created=created, model=name, choices=[CompletionChoice(
                        index=index, text=piece.text, finish_reason=piece.finish_reason, logprobs=logprobs)])
                if piece.finish_reason:
                    produced[index] = piece.completion_tokens

        async for chunk in self.model.each_choice_streamed(choice, params, request.n or 1, leave):
            yield chunk
        if request.include_usage:
            yield CompletionResponse(id=id_, created=created, model=name, choices=[],
                                     usage=Usage.of(len(prompt_ids), sum(produced.values())))


# ---------------------------------------------------------------- routers and app


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return router


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


def models_router(models: Models) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[service.model_card() for service in models.by_name.values()])

    return router


async def respond(service: ChatService | CompletionService,
                  request: ChatCompletionRequest | CompletionRequest) -> BaseModel | StreamingResponse:
    prompt_ids, params = service.prepare(request)  # errors are raised here, while a status can still be sent
    leave = service.model.admit()
    if request.stream:
        return _event_stream(service.stream(request, prompt_ids, params, leave))
    return await service.complete(request, prompt_ids, params, leave)


def chat_router(models: Models) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None)
    async def create_chat_completion(request: ChatCompletionRequest,
                                     http: Request) -> ChatCompletionResponse | StreamingResponse:
        return await respond(ChatService(models.get(request.model, http)), request)

    return router


def completions_router(models: Models) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=None)
    async def create_completion(request: CompletionRequest,
                                http: Request) -> CompletionResponse | StreamingResponse:
        return await respond(CompletionService(models.get(request.model, http)), request)

    return router


def build_gateway(served: Sequence[ServedModel], *, max_new_tokens: int,
                         limits: Limits | None = None) -> FastAPI:
    """The API app over several models, routed by each request's `model`. `max_new_tokens` is the
    completion budget of a request that sets none (capped by what is left of the context window)."""
    names = [model.name for model in served]
    if not served or len(set(names)) < len(names):
        raise ValueError(f"models to serve need distinct names, not {names}")
    limits = limits or Limits()
    metrics = Metrics()
    admission = Admission(limits.max_queue)  # one bound for the whole gateway: it guards its memory
    models = Models([ModelService(m.engine, m.tokenizer, m.name, max_new_tokens, metrics, admission, m.parent)
                     for m in served])
    app = FastAPI(title="solo", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(health_router())
    in_flight = lambda: {name: admission.in_flight[name] for name in names}  # noqa: E731
    app.include_router(metrics_router(metrics, models.loads, in_flight))
    app.include_router(models_router(models))
    app.include_router(chat_router(models))
    app.include_router(completions_router(models))
    # Added last, run first: count every answer, the guard's refusals included. With one model,
    # every request is about it, refused or not.
    app.add_middleware(Guard, limits=limits)
    app.add_middleware(RequestCounter, metrics=metrics, unattributed=names[0] if len(names) == 1 else "",
                       endpoints={"/v1/models", "/v1/chat/completions", "/v1/completions"})
    return app
