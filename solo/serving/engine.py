"""What the API layer needs from a model: token ids in, token ids out, as they are decoded.

Text, chat templates and HTTP stay on the API side, so an engine is swappable (a CPU loop, a
remote Ray Serve replica, vLLM, a fake in a test) without the API noticing.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 decodes greedily
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = field(default=())
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # and this, once per time it was generated
    # The output must be JSON matching this JSON schema (`{"type": "object"}`: any object), then
    # one of `stop_token_ids`: grammar-constrained decoding, as vLLM's structured outputs.
    json_schema: str | None = None
    # Log-probabilities of each generated token and of the `logprobs` likeliest alternatives
    # (0: the generated token's alone), from the model's own distribution, before penalties,
    # grammar masks and temperature. None: not wanted.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if (self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1
                or not -2 <= self.presence_penalty <= 2 or not -2 <= self.frequency_penalty <= 2
                or (self.logprobs is not None and not 0 <= self.logprobs <= 20)):
            raise ValueError(f"invalid sampling parameters: {self}")


@dataclass(frozen=True)
class EngineLoad:
    """What an engine has on its hands, for metrics and admission."""

    waiting: int = 0  # admitted, not yet running
    running: int = 0


@dataclass(frozen=True)
class Delta:
    """Tokens decoded since the last delta; the last delta of a generation has a finish reason.

    A stop token that ends a generation is part of it (it was generated and counts as usage);
    hiding it from text is the API side's business.
    """

    token_ids: list[int]
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token, when the parameters asked for them

    def __add__(self, later: Delta) -> Delta:
        logprobs = self.logprobs + later.logprobs if self.logprobs is not None else None
        return Delta(self.token_ids + later.token_ids, later.finish_reason, logprobs)


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # likeliest first


class Engine(abc.ABC):
    max_context: int  # prompt and completion together, in tokens

    async def load(self) -> EngineLoad:
        return EngineLoad()

    @abc.abstractmethod
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """An async generator of deltas. Closing it early (the client went away) must stop the
        work it started. Implementations are `async def` generators."""

    def with_adapter(self, name: str, folder: str) -> Engine:
        """This model with the LoRA adapter in `folder` (peft's format) applied, as an engine."""
        raise NotImplementedError(f"{type(self).__name__} serves no LoRA adapters")

    def retire(self) -> None:  # noqa: B027 (a hook: an engine that holds nothing needs none)
        """No new generations are coming: free what the engine holds once the running ones end.
        Safe to call from any thread."""

    def check_health(self) -> None:  # noqa: B027 (a hook: an engine in this process is as healthy as it)
        """Raise if the engine can serve no more, so that Ray Serve replaces its replica."""


async def drain(queue: asyncio.Queue) -> AsyncIterator[Delta]:
    """The deltas an engine puts on `queue` (or the exception that ended the generation), until
    the one with a finish reason. A consumer that fell behind (a busy gateway, a slow client)
    takes every delta waiting for it as one: one message per token would only fall further behind."""
    while True:
        delta = await queue.get()
        while not isinstance(delta, BaseException) and delta.finish_reason is None and not queue.empty():
            more = queue.get_nowait()
            delta = more if isinstance(more, BaseException) else delta + more
        if isinstance(delta, BaseException):
            raise delta
        yield delta
        if delta.finish_reason is not None:
            return


async def in_messages(deltas: AsyncIterator[Delta], min_tokens: int, max_delay_s: float,
                      clock: Callable[[], float] = time.monotonic) -> AsyncIterator[Delta]:
    """`deltas` regrouped for sending between processes: the first at once (time to first token),
    then merged until one holds `min_tokens` tokens, or `max_delay_s` has passed since the last
    message, or the generation ends. A message between Ray processes costs about as much as
    decoding a token of a small model, so a fast model sent token by token spends the gateway's
    core on messaging, while a slow one (a token every 50 ms) still streams token by token.
    Closing this generator closes `deltas`, so a client that leaves still frees its slot."""
    async with aclosing(deltas):
        pending, last_sent = None, None
        async for delta in deltas:
            pending = delta if pending is None else pending + delta
            if (last_sent is None or len(pending.token_ids) >= min_tokens or pending.finish_reason is not None
                    or clock() - last_sent >= max_delay_s):
                yield pending
                pending, last_sent = None, clock()
        if pending is not None:  # an engine that ended without a finish reason
            yield pending
