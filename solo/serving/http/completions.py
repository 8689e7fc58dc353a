"""`POST /v1/completions`: raw text (or token ids) in, no chat template, text out, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from solo.serving.engine import SamplingParams, TokenLogprob
from solo.serving.http.errors import APIError
from solo.serving.http.service import Admitted, Models, ModelService, respond
from solo.serving.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    completion_id,
    now,
)


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
                       admitted: Admitted) -> CompletionResponse:
        async def choice(index: int, params: SamplingParams) -> tuple[CompletionChoice, int]:
            pieces = [p async for p in self.model.run(prompt_ids, params, request.stop_strings, admitted)]
            logprobs = (self.model.texts.completion([lp for p in pieces for lp in p.logprobs])
                        if request.logprobs is not None else None)
            return CompletionChoice(index=index, text="".join(p.text for p in pieces),
                                    finish_reason=pieces[-1].finish_reason, logprobs=logprobs), \
                pieces[-1].completion_tokens

        choices = await self.model.each_choice(choice, params, request.n or 1, admitted)
        return CompletionResponse(
            id=completion_id("cmpl"), created=now(), model=self.model.model_name, choices=[c for c, _ in choices],
            usage=Usage.of(len(prompt_ids), sum(tokens for _, tokens in choices)))

    async def stream(self, request: CompletionRequest, prompt_ids: list[int], params: SamplingParams,
                     admitted: Admitted) -> AsyncIterator[CompletionResponse]:
        id_, created, name = completion_id("cmpl"), now(), self.model.model_name
        produced = {}

        async def choice(index: int, params: SamplingParams) -> AsyncIterator[CompletionResponse]:
            pending: list[TokenLogprob] = []
            offset = 0
            async for piece in self.model.run(prompt_ids, params, request.stop_strings, admitted):
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

        async for chunk in self.model.each_choice_streamed(choice, params, request.n or 1, admitted):
            yield chunk
        if request.include_usage:
            yield CompletionResponse(id=id_, created=created, model=name, choices=[],
                                     usage=Usage.of(len(prompt_ids), sum(produced.values())))


def completions_router(models: Models) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=None)
    async def create_completion(request: CompletionRequest,
                                http: Request) -> CompletionResponse | StreamingResponse:
        return await respond(CompletionService(models.get(request.model, http)), request, http)

    return router
