"""What the API layer needs from a model: token ids in, token ids out, as they are decoded.

Text, chat templates and HTTP stay on the API side, so an engine is swappable (a CPU loop, a
remote Ray Serve replica, vLLM, a fake in a test) without the API noticing.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
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

    def __post_init__(self) -> None:
        if (self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1
                or not -2 <= self.presence_penalty <= 2 or not -2 <= self.frequency_penalty <= 2):
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


class Engine(abc.ABC):
    max_context: int  # prompt and completion together, in tokens

    async def load(self) -> EngineLoad:
        return EngineLoad()

    @abc.abstractmethod
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """An async generator of deltas. Closing it early (the client went away) must stop the
        work it started. Implementations are `async def` generators."""
