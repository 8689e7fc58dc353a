"""`POST /v1/chat/completions`: messages in through the model's chat template; an assistant message out,
with tool calls parsed from it, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from solo.serving.engine import SamplingParams, TokenLogprob
from solo.serving.grammar import check_schema
from solo.serving.http.errors import APIError
from solo.serving.http.service import Admitted, Models, ModelService, respond
from solo.serving.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatFinishReason,
    Choice,
    ChunkChoice,
    DeltaMessage,
    FinishReason,
    Tool,
    ToolCallDelta,
    Usage,
    completion_id,
    now,
)
from solo.serving.tools import ToolCallStream
from solo.tokens.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, render_chat


class ChatService:
    """A chat request becomes prompt ids and sampling parameters; the engine's tokens become an
    assistant message (tool calls parsed out when tools were offered) or a stream of chunks."""

    def __init__(self, model: ModelService):
        self.model = model

    def prepare(self, request: ChatCompletionRequest) -> tuple[list[int], SamplingParams]:
        tokenizer = self.model.tokenizer
        # Every tool's parameters must be a schema the model could be held to, whatever `tool_choice` says
        # now: an agent that sends a broken one learns it at once, not on the day it forces a call.
        for i, tool in enumerate(request.tools or []):
            if tool.function.parameters is not None:
                _constraint(tool.function.parameters, f"tools[{i}].function.parameters")
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
                       admitted: Admitted) -> ChatCompletionResponse:
        async def choice(index: int, params: SamplingParams) -> tuple[Choice, int]:
            pieces = [p async for p in self.model.run(prompt_ids, params, request.stop_strings, admitted)]
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

        choices = await self.model.each_choice(choice, params, request.n or 1, admitted)
        return ChatCompletionResponse(
            id=completion_id(), created=now(), model=self.model.model_name, choices=[c for c, _ in choices],
            usage=Usage.of(len(prompt_ids), sum(tokens for _, tokens in choices)))

    async def stream(self, request: ChatCompletionRequest, prompt_ids: list[int], params: SamplingParams,
                     admitted: Admitted) -> AsyncIterator[ChatCompletionChunk]:
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
            async for piece in self.model.run(prompt_ids, params, request.stop_strings, admitted):
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
                    yield chunk(DeltaMessage(tool_calls=[ToolCallDelta(index=first + i, id=call.id,
                                                                       function=call.function)
                                                         for i, call in enumerate(calls)]))
                if final:
                    yield chunk(DeltaMessage(), _chat_finish(piece.finish_reason, bool(tools and tools.calls)))
                    produced[index] = piece.completion_tokens

        async for chunk in self.model.each_choice_streamed(choice, params, request.n or 1, admitted):
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


def chat_router(models: Models) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None)
    async def create_chat_completion(request: ChatCompletionRequest,
                                     http: Request) -> ChatCompletionResponse | StreamingResponse:
        return await respond(ChatService(models.get(request.model, http)), request, http)

    return router
