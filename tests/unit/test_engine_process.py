"""The CPU engine in a process of its own (what `solo serve` runs in each CPU replica): the same
tokens as in-process, errors and adapters across the process boundary, a client that leaves
aborting its generation there, and an engine process that ends with its owner."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from multiprocessing.connection import Connection

import pytest

from solo.serving.cpu_engine import CpuEngine
from solo.serving.engine import Delta, Engine, SamplingParams
from solo.serving.engine_child import serve_engine
from solo.serving.engine_process import EngineProcess
from solo.tokens.tokenizer import load, stop_token_ids

PROMPTS = [[5, 17, 42, 99, 7], [7, 8, 9, 10, 11, 12], [300, 2], [99] * 10]


@pytest.fixture(scope="module")
def engine_process(tiny_model_dir):
    engine = EngineProcess(tiny_model_dir, max_concurrent=4, threads=1)
    yield engine
    engine.close()
    assert engine._process.returncode == 0, "it saw its socket close and exited, without being killed"


async def collect(engine: Engine, prompt_ids: list[int], params: SamplingParams) -> Delta:
    """The whole generation as one delta."""
    whole = None
    async for delta in engine.generate(prompt_ids, params):
        whole = delta if whole is None else whole + delta
    return whole


def test_the_same_generations_as_the_engine_in_process(engine_process, tiny_model_dir):
    stops = tuple(stop_token_ids(load(tiny_model_dir)))
    greedy = SamplingParams(max_tokens=40, temperature=0, stop_token_ids=stops, logprobs=2)
    sampled = SamplingParams(max_tokens=30, temperature=0.9, top_p=0.9, seed=11, presence_penalty=0.5,
                             frequency_penalty=0.3)

    async def generations(engine: Engine) -> list[Delta]:
        together = await asyncio.gather(*(collect(engine, ids, greedy) for ids in PROMPTS))
        one_by_one = [await collect(engine, ids, sampled) for ids in PROMPTS]
        return [*together, *one_by_one]

    from_process = asyncio.run(generations(engine_process))
    in_process = asyncio.run(generations(CpuEngine(tiny_model_dir, max_concurrent=4, threads=1)))
    assert [d.token_ids for d in from_process] == [d.token_ids for d in in_process]
    assert [d.finish_reason for d in from_process] == [d.finish_reason for d in in_process]
    for ours, theirs in zip(from_process[:4], in_process[:4]):  # batched differently: equal up to rounding
        assert [(lp.token_id, [t for t, _ in lp.top]) for lp in ours.logprobs] == \
            [(lp.token_id, [t for t, _ in lp.top]) for lp in theirs.logprobs]
        assert [lp.logprob for lp in ours.logprobs] == pytest.approx([lp.logprob for lp in theirs.logprobs], abs=1e-4)
    assert len({tuple(d.token_ids) for d in from_process}) == len(from_process), "the prompts gave distinct outputs"


def test_a_bad_request_raises_its_own_error_and_the_engine_goes_on(engine_process):
    with pytest.raises(ValueError, match="a prompt must have"):
        asyncio.run(collect(engine_process, [], SamplingParams(max_tokens=4, temperature=0)))
    assert len(asyncio.run(collect(engine_process, PROMPTS[0], SamplingParams(max_tokens=4))).token_ids) == 4
    engine_process.check_health()


def test_an_adapter_is_merged_in_the_engine_process_and_retired_there(engine_process, tiny_lora, tmp_path):
    prompt_ids, expected = tiny_lora.prompt_ids, tiny_lora.expected
    greedy = SamplingParams(max_tokens=12, temperature=0)

    tuned = engine_process.with_adapter("x", str(tiny_lora.folder))
    assert asyncio.run(collect(tuned, prompt_ids, greedy)).token_ids == expected
    assert asyncio.run(collect(engine_process, prompt_ids, greedy)).token_ids != expected, "the base stays itself"
    tuned.retire()
    with pytest.raises(RuntimeError, match="adapter x is not loaded"):
        asyncio.run(collect(tuned, prompt_ids, greedy))
    with pytest.raises(RuntimeError, match="adapter y could not be loaded"):
        engine_process.with_adapter("y", str(tmp_path / "no-such-adapter"))


class _Waiting(Engine):
    """One delta, then waits for ever: until whoever consumes it goes away."""

    max_context = 100

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def generate(self, prompt_ids, params):
        try:
            yield Delta([1])
            await asyncio.Event().wait()
        finally:
            self.closed.set()


def test_an_abort_closes_the_generation_and_a_closed_socket_ends_the_engine():
    async def run():
        engine = _Waiting()
        ours, theirs = socket.socketpair()
        replica, child = Connection(ours.detach()), Connection(theirs.detach())
        served = asyncio.create_task(serve_engine(child, engine))
        assert await asyncio.to_thread(replica.recv) == ("ready", 100)
        replica.send(("generate", 7, "", [1, 2], SamplingParams(max_tokens=5)))
        assert await asyncio.to_thread(replica.recv) == ("deltas", [(7, Delta([1]))])
        replica.send(("abort", 7))
        await asyncio.wait_for(engine.closed.wait(), timeout=60)  # a hang guard: set only by the abort
        replica.close()
        await asyncio.wait_for(served, timeout=60)

    asyncio.run(run())


def test_a_dead_engine_process_fails_its_generations_and_the_health_check(tiny_model_dir):
    engine = EngineProcess(tiny_model_dir, max_concurrent=1, threads=1)

    async def run():
        generation = engine.generate(PROMPTS[0], SamplingParams(max_tokens=200, temperature=0))
        await anext(generation)  # running now, with 199 tokens to go
        os.kill(engine._process.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="exit code -9"):
            async for _ in generation:
                pass

    asyncio.run(run())
    with pytest.raises(RuntimeError, match="exit code -9"):
        engine.check_health()
    with pytest.raises(RuntimeError, match="exit code -9"):
        asyncio.run(collect(engine, PROMPTS[0], SamplingParams(max_tokens=2)))


def test_a_folder_it_cannot_load_is_an_error_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="could not load the model"):
        EngineProcess(tmp_path, max_concurrent=1, threads=1)
