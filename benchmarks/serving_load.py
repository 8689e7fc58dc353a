"""The load both serving benchmarks put on a model: concurrent clients sending the same chat
question back to back, each a stream read with the official `openai` client, and the figures
taken from it (output tokens/s, time to first token)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

QUESTION = [{"role": "user", "content": "What does json.dumps do? Explain with an example."}]

# One request: (seconds to its first token, output tokens).
OneRequest = Callable[[], Awaitable[tuple[float, int]]]


def build_model(folder: Path, preset: str) -> Path:
    """A random Llama with solo's tokenizer: the speed of a model does not depend on its training."""
    import torch
    from transformers import LlamaForCausalLM

    from solo.data import corpus
    from solo.tokens.tokenizer import stop_token_ids
    from solo.tokens.train_bpe import train_bpe
    from solo.train.presets import llama_config

    tok = train_bpe((doc["text"] for doc in corpus.documents(max_documents=300)), vocab_size=4096, min_frequency=2)
    config = llama_config(preset, vocab_size=len(tok), seq_len=1024, eos_token_id=stop_token_ids(tok))
    config.initializer_range = 0.1  # varied output, as in the tests
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def parameter_count_of(folder: Path) -> int:
    from transformers import AutoConfig

    from solo.train.presets import parameter_count

    return parameter_count(AutoConfig.from_pretrained(folder))


def at_level(repeats: list[dict], path: str, concurrency: int) -> list[dict]:
    """The results of `path` (a key of each repetition, such as "engine" or "served") at
    `concurrency` clients, one per repetition."""
    return [r for rep in repeats for r in rep[path] if r["concurrency"] == concurrency]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(concurrency: int, wall: float, ttfts: list[float], tokens: int) -> dict:
    return {"concurrency": concurrency, "requests": len(ttfts), "output_tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1), "ttft_p50_ms": round(1000 * percentile(ttfts, 50), 1),
            "ttft_p99_ms": round(1000 * percentile(ttfts, 99), 1)}


async def drive(concurrency: int, requests_per_client: int, one_request: OneRequest) -> dict:
    """`concurrency` clients, each sending its requests back to back."""
    ttfts, tokens = [], 0

    async def client():
        nonlocal tokens
        for _ in range(requests_per_client):
            ttft, n = await one_request()
            ttfts.append(ttft)
            tokens += n

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summarize(concurrency, time.perf_counter() - start, ttfts, tokens)


def streamed_chat(client, model: str, max_tokens: int) -> OneRequest:
    """QUESTION to `model` through `client` (an `openai.AsyncOpenAI`), decoded greedily and
    streamed, its output tokens read from the usage the server reports (else its messages counted)."""

    async def one_request() -> tuple[float, int]:
        start, ttft, usage, chunks = time.perf_counter(), None, None, 0
        stream = await client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft or time.perf_counter() - start
                chunks += 1
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        # A server that reports no usage when streaming (llama-cpp-python's) sends a token a message.
        return ttft or time.perf_counter() - start, chunks if usage is None else usage

    return one_request


def load_levels(url: str, model: str, levels: list[int], max_tokens: int, rounds: int,
                cpu_seconds: Callable[[], dict[str, float]] | None = None) -> list[dict]:
    """A warm-up request, then `rounds` requests from each client at each level of concurrency,
    against the OpenAI API at `url`. With `cpu_seconds` (the CPU seconds each process has used so
    far, by role), each level's result also says what a request cost each, as `cpu_ms_per_request`."""
    import openai

    async def run_all() -> list[dict]:
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600) as client:
            one_request = streamed_chat(client, model, max_tokens)
            await drive(1, 1, one_request)
            results = []
            for concurrency in levels:
                before = cpu_seconds() if cpu_seconds else {}
                result = await drive(concurrency, rounds, one_request)
                if cpu_seconds:
                    after = cpu_seconds()
                    result["cpu_ms_per_request"] = {
                        role: round(1000 * (after[role] - before[role]) / result["requests"], 1) for role in before}
                results.append(result)
            return results

    return asyncio.run(run_all())
