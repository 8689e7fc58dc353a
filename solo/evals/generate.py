"""Greedy generation for evaluation, through the serving engine interface.

Every prompt goes to an `Engine` (`solo.serving.engine`) at once, as if that many clients had
sent a request together: the engine batches them the way it batches a server's requests, and
each reply is cut at its first stop string by the server's own `TextStream`. A GSM8K score is
therefore a score of the model exactly as `solo serve` runs it, not of a second decoding loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import aclosing

from solo.serving.cpu_engine import CpuEngine
from solo.serving.detokenize import TextStream
from solo.serving.engine import Engine, SamplingParams
from solo.tokens.tokenizer import render_chat, stop_token_ids


def cpu_engine(model, batch_size: int) -> Engine:
    """The CPU engine over a model already in memory; `batch_size` sequences decode together."""
    return CpuEngine(model, max_concurrent=batch_size)


def greedy(engine: Engine, tokenizer, prompts: Sequence[str], max_new_tokens: int,
           stop: Sequence[str] = ()) -> list[str]:
    """The greedy continuation of each text prompt, in order. A prompt longer than the window loses
    its start (the few-shot examples, never the question); at least half the window is left for
    the reply."""
    new_tokens = min(max_new_tokens, engine.max_context // 2)
    budget = engine.max_context - new_tokens
    encoded = [([tokenizer.eos_token_id] + tokenizer(p, add_special_tokens=False)["input_ids"])[-budget:]
               for p in prompts]
    return greedy_ids(engine, tokenizer, encoded, new_tokens, stop)


def greedy_ids(engine: Engine, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int,
               stop: Sequence[str] = ()) -> list[str]:
    """Replies to prompts already tokenized (a chat rendered by its template), in order."""
    stop_ids = tuple(stop_token_ids(tokenizer))

    async def reply(prompt_ids: list[int]) -> str:
        params = SamplingParams(max_tokens=min(max_new_tokens, engine.max_context - len(prompt_ids)),
                                temperature=0, stop_token_ids=stop_ids)
        text, pieces = TextStream(tokenizer, set(stop_ids), list(stop)), []
        # Leaving the block at a stop string closes the generator: the engine drops the sequence.
        async with aclosing(engine.generate(prompt_ids, params)) as deltas:
            async for delta in deltas:
                pieces.append(text.push(delta.token_ids, final=delta.finish_reason is not None))
                if text.stopped or delta.finish_reason is not None:
                    break
        return "".join(pieces)

    async def every_reply() -> list[str]:
        return await asyncio.gather(*(reply(list(ids)) for ids in prompts))

    return asyncio.run(every_reply())


def chat_answers(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to one-turn chats, rendered by the model's chat template and decoded by the
    serving engine: what `solo serve` would answer at temperature 0."""
    prompts = [render_chat(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)[0]
               for q in questions]
    return [reply.strip() for reply in greedy_ids(cpu_engine(model, len(prompts)), tokenizer, prompts, max_new_tokens)]
