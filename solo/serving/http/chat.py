"""`POST /v1/chat/completions`: messages in through the model's chat template; an assistant message out,
with tool calls parsed from it, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

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
    FunctionCallDelta,
    ToolCallDelta,
    Usage,
    completion_id,
    now,
)
from solo.serving.tools import ForcedCall
from solo.tokens.tokenizer import render_chat


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
        if request.parses_tool_calls and self.model.tool_format is None:
            raise APIError(400, f"The model `{self.model.model_name}` has no tool-call markup solo knows in its chat "
                                "template: it cannot be offered tools (a serve config's tool_parser names one).",
                           param="tools", code="invalid_value")
        try:
            prompt_ids, _ = render_chat(tokenizer, request.template_messages(), request.template_tools(),
                                        add_generation_prompt=True)
        except TemplateError as error:  # the template's own raise_exception: a conversation it cannot write
            raise APIError(400, f"The model's chat template refused the conversation: {error}", param="messages",
                           code="invalid_value") from None
        if request.forced_tools:
            # The reply opens with the family's call markup (given, not sampled), then JSON naming one of the
            # tools with arguments its schema allows, then the closing markup or the end of the turn.
            forced = self.forced_call(request)
            prompt_ids = [*prompt_ids, *tokenizer.encode(forced.prefix, add_special_tokens=False)]
            params = self.model.sampling(request, prompt_ids, request.requested_max_tokens, "messages")
            schema = _constraint(forced.schema, "tools")
            close = _single_token(tokenizer, forced.close)
            return prompt_ids, replace(params, json_schema=schema,
                                       stop_token_ids=params.stop_token_ids if close is None else (close,))
        params = self.model.sampling(request, prompt_ids, request.requested_max_tokens, "messages")
        schema = request.response_format.output_schema() if request.response_format else None
        if schema is not None:
            params = replace(params, json_schema=_constraint(schema, "response_format"))
        return prompt_ids, params

    def forced_call(self, request: ChatCompletionRequest) -> ForcedCall:
        return self.model.tool_format.forced_call([tool.function.model_dump() for tool in request.forced_tools])

    async def complete(self, request: ChatCompletionRequest, prompt_ids: list[int], params: SamplingParams,
                       admitted: Admitted) -> ChatCompletionResponse:
        async def choice(index: int, params: SamplingParams) -> tuple[Choice, int]:
            pieces = [p async for p in self.model.run(prompt_ids, params, request.stop_strings, admitted)]
            text, finish = "".join(p.text for p in pieces), pieces[-1].finish_reason
            if request.forced_tools:  # the markup was the prompt's and the stop's: parse as if written
                forced = self.forced_call(request)
                text = forced.prefix + text + ((forced.close or "") if finish == "stop" else "")
            content, calls = text, None
            if request.parses_tool_calls:
                parsed = self.model.tool_format.parse(text)
                content, calls = parsed.content, parsed.calls[:request.most_tool_calls] or None
                if calls and not content.strip():  # the newlines around calls are markup, not an answer
                    content = ""
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
            tools = self.model.tool_format.stream() if request.parses_tool_calls else None
            forced = self.forced_call(request) if request.forced_tools else None
            if forced is not None:
                tools.push(forced.prefix)
            sent = 0  # calls streamed so far
            async for piece in self.model.run(prompt_ids, params, request.stop_strings, admitted):
                final = piece.finish_reason is not None
                content, calls = piece.text, []
                pending.extend(piece.logprobs)
                if tools is not None:
                    closing = forced.close if forced is not None and piece.finish_reason == "stop" else None
                    parsed = tools.push(piece.text + (closing or ""), final=final)
                    content, calls = parsed.content, parsed.calls
                    if calls and not content.strip():
                        content = ""
                if content:
                    yield chunk(DeltaMessage(content=content))
                for call in calls:
                    if request.most_tool_calls is not None and sent >= request.most_tool_calls:
                        break
                    # As OpenAI streams a call: its id and name first, then its arguments.
                    yield chunk(DeltaMessage(tool_calls=[ToolCallDelta(
                        index=sent, id=call.id, type="function",
                        function=FunctionCallDelta(name=call.function.name, arguments=""))]))
                    yield chunk(DeltaMessage(tool_calls=[ToolCallDelta(
                        index=sent, function=FunctionCallDelta(arguments=call.function.arguments))]))
                    sent += 1
                if final:
                    yield chunk(DeltaMessage(), _chat_finish(piece.finish_reason, bool(tools and tools.calls)))
                    produced[index] = piece.completion_tokens

        async for chunk in self.model.each_choice_streamed(choice, params, request.n or 1, admitted):
            yield chunk
        if request.include_usage:
            yield ChatCompletionChunk(id=id_, created=created, model=name, choices=[],
                                      usage=Usage.of(len(prompt_ids), sum(produced.values())))


def _single_token(tokenizer: PreTrainedTokenizerBase, text: str | None) -> int | None:
    """The id of the one token that is `text` (a special or added token, as a family's closing tag), else None."""
    if not text:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


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
