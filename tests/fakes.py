"""The engine fake every CPU test of the API layer shares: one place, as Ray Serve LLM keeps its mocks."""

from __future__ import annotations

from collections.abc import AsyncIterator

from solo.serving.engine import Delta, Engine, SamplingParams


class FakeEngine(Engine):
    """Plays back `script` one token per delta, as a real engine would, and records each call."""

    def __init__(self, script: list[int], max_context: int = 256, fail_after: int | None = None):
        self.script = script
        self.max_context = max_context
        self.fail_after = fail_after
        self.calls: list[tuple[list[int], SamplingParams]] = []
        self.closed_early = False

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        self.calls.append((prompt_ids, params))
        steps = self.script[:params.max_tokens]
        done = False
        try:
            for i, token in enumerate(steps):
                if self.fail_after is not None and i == self.fail_after:
                    raise RuntimeError("engine exploded at /secret/path.py line 7")
                if token in params.stop_token_ids:
                    done = True
                    yield Delta([token], "stop")
                    return
                last = i == len(steps) - 1
                done = last
                yield Delta([token], "length" if last else None)
        finally:
            self.closed_early = not done
