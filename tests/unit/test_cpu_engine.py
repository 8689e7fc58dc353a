"""CpuEngine against Hugging Face's own `generate` on a real (untrained) tiny Llama, alone and batched."""

from __future__ import annotations

import asyncio
import collections

import pytest
import torch
from transformers import LlamaForCausalLM

from solo.serving.cpu_engine import CpuEngine, penalize
from solo.serving.engine import Delta, EngineLoad, SamplingParams, in_messages
from solo.tokens.tokenizer import render_chat, stop_token_ids
from tests.waits import until

QUESTIONS = ["What does json.dumps do?", "Explain the for statement."]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture
def engine(tiny_model_dir) -> CpuEngine:
    return CpuEngine(tiny_model_dir, max_concurrent=2)


def prompt(tokenizer, question: str) -> list[int]:
    return render_chat(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)[0]


async def collect(engine: CpuEngine, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], str | None]:
    tokens, finish = [], None
    async for delta in engine.generate(prompt_ids, params):
        assert finish is None, "nothing may follow the delta that carries the finish reason"
        tokens += delta.token_ids
        finish = delta.finish_reason
    return tokens, finish


def greedy(max_tokens: int, stops: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, stop_token_ids=stops)


@pytest.mark.parametrize("question", QUESTIONS)
def test_greedy_decoding_matches_hf_generate(engine, reference, tokenizer, question):
    ids = prompt(tokenizer, question)
    expected = reference.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=48)[0, len(ids):].tolist()
    assert len(set(expected)) > 10, "the reference output is too uniform to tell decoders apart"
    stops = tuple(stop_token_ids(tokenizer))
    tokens, finish = asyncio.run(collect(engine, ids, greedy(48, stops)))
    assert tokens == expected
    assert finish == ("stop" if tokens[-1] in stops else "length")


def test_a_stop_token_ends_the_generation(engine, tokenizer):
    ids = prompt(tokenizer, QUESTIONS[0])
    free, _ = asyncio.run(collect(engine, ids, greedy(40)))
    stop = free[7]
    first = free.index(stop)
    tokens, finish = asyncio.run(collect(engine, ids, greedy(40, (stop,))))
    assert tokens == free[:first + 1] and finish == "stop"


def test_max_tokens_ends_with_length(engine, tokenizer):
    tokens, finish = asyncio.run(collect(engine, prompt(tokenizer, QUESTIONS[0]), greedy(5)))
    assert len(tokens) == 5 and finish == "length"


def test_the_context_window_ends_with_length(engine, tokenizer):
    ids = (prompt(tokenizer, QUESTIONS[0]) * 100)[:engine.max_context - 3]
    tokens, finish = asyncio.run(collect(engine, ids, greedy(50)))
    assert len(tokens) == 3 and finish == "length"
    with pytest.raises(ValueError):
        asyncio.run(collect(engine, [*ids, 1, 2, 3], greedy(1)))


def test_a_seed_makes_sampling_reproducible(engine, tokenizer):
    ids = prompt(tokenizer, QUESTIONS[0])

    def sampled(seed: int | None, top_p: float = 1.0) -> list[int]:
        params = SamplingParams(max_tokens=24, temperature=1.0, top_p=top_p, seed=seed)
        return asyncio.run(collect(engine, ids, params))[0]

    assert sampled(1) == sampled(1)
    assert sampled(1) != sampled(2)
    assert sampled(None) != sampled(None)
    # top_p so small that only the likeliest token is left: sampling turns greedy.
    assert sampled(3, top_p=1e-9) == asyncio.run(collect(engine, ids, greedy(24)))[0]


def test_concurrent_requests_keep_their_own_cache(engine, tokenizer):
    prompts = [prompt(tokenizer, q) for q in QUESTIONS] + [prompt(tokenizer, QUESTIONS[0])]
    alone = [asyncio.run(collect(engine, p, greedy(20)))[0] for p in prompts]

    async def together():
        # Three requests on two slots: the third waits for one to free up.
        return await asyncio.gather(*(collect(engine, p, greedy(20)) for p in prompts))

    assert [tokens for tokens, _ in asyncio.run(together())] == alone


def count_forwards(engine, monkeypatch) -> list[int]:
    """The batch size of every forward pass the engine makes, in order."""
    sizes: list[int] = []
    forward = engine.model.forward

    def counting_forward(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting_forward)
    return sizes


def test_concurrent_requests_share_each_forward_pass(tiny_model_dir, tokenizer, monkeypatch):
    engine = CpuEngine(tiny_model_dir, max_concurrent=8)
    sizes = count_forwards(engine, monkeypatch)
    prompts = [prompt(tokenizer, q) for q in QUESTIONS * 2]

    async def together():
        return await asyncio.gather(*(collect(engine, p, greedy(20)) for p in prompts))

    assert all(len(tokens) == 20 for tokens, _ in asyncio.run(together()))
    # One at a time would take 4 x 20 passes; batched, one prefill and 19 decode steps of all four.
    assert sorted(sizes) == [4] * 20


def test_a_request_joining_a_running_batch_decodes_as_if_alone(tiny_model_dir, tokenizer, monkeypatch):
    engine = CpuEngine(tiny_model_dir, max_concurrent=8)
    short, long = prompt(tokenizer, "Hi."), prompt(tokenizer, QUESTIONS[1] * 3)
    alone = [asyncio.run(collect(engine, p, greedy(30)))[0] for p in (long, short, long)]
    sizes = count_forwards(engine, monkeypatch)

    async def staggered():
        first = asyncio.create_task(collect(engine, long, greedy(30)))
        await until(lambda: len(sizes) >= 5, "the first request's fifth forward pass")
        second = asyncio.create_task(collect(engine, short, greedy(30)))
        await until(lambda: len(sizes) >= 12, "the twelfth forward pass")
        third = asyncio.create_task(collect(engine, long, greedy(30)))
        return [tokens for tokens, _ in await asyncio.gather(first, second, third)]

    assert asyncio.run(staggered()) == alone
    assert max(sizes) == 3, "the three requests never ran in one batch"


def test_penalties_push_down_tokens_already_generated():
    counts = collections.Counter({3: 2, 5: 1})
    logits = torch.zeros(8)
    params = SamplingParams(max_tokens=1, presence_penalty=0.5, frequency_penalty=1.0)
    assert penalize(logits, counts, params).tolist() == [0, 0, 0, -2.5, 0, -1.5, 0, 0]
    assert penalize(logits, counts, SamplingParams(max_tokens=1)) is logits


def test_a_closed_consumer_stops_its_generation(engine, tokenizer, monkeypatch):
    sizes = count_forwards(engine, monkeypatch)
    ids = prompt(tokenizer, QUESTIONS[0])

    async def read_two_then_leave() -> int:
        stream = engine.generate(ids, greedy(200))
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        at_close = len(sizes)
        await asyncio.sleep(0.3)
        assert await engine.load() == EngineLoad(waiting=0, running=0)
        return at_close

    async def cancel_midway() -> int:
        async def consume():
            async for _ in engine.generate(ids, greedy(200)):
                pass

        task = asyncio.create_task(consume())
        await until(lambda: len(sizes) >= 5, "the fifth forward pass")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        at_cancel = len(sizes)
        await asyncio.sleep(0.3)
        assert await engine.load() == EngineLoad(waiting=0, running=0)
        return at_cancel

    # The scheduler runs at most the step under way past the consumer's leaving, not to max_tokens.
    at_close = asyncio.run(read_two_then_leave())
    assert len(sizes) <= at_close + 1 < 10
    sizes.clear()
    at_cancel = asyncio.run(cancel_midway())
    assert len(sizes) <= at_cancel + 1 < 10

    async def fill_both_slots():
        return await asyncio.wait_for(asyncio.gather(*(collect(engine, ids, greedy(3)) for _ in range(2))), 30)

    # Both requests gave their slot back, or this would wait forever.
    assert [len(tokens) for tokens, _ in asyncio.run(fill_both_slots())] == [3, 3]


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "answer": {"enum": ["yes", "no", "maybe"]}},
          "required": ["ok", "answer"], "additionalProperties": False}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_constrained_output_is_json_that_matches_the_schema_then_a_stop_token(engine, tokenizer, temperature):
    import json

    stops = tuple(stop_token_ids(tokenizer))
    ids = prompt(tokenizer, QUESTIONS[0])
    for seed in range(3):
        params = SamplingParams(max_tokens=64, temperature=temperature, seed=seed, stop_token_ids=stops,
                                json_schema=json.dumps(SCHEMA))
        tokens, finish = asyncio.run(collect(engine, ids, params))
        assert finish == "stop" and tokens[-1] in stops
        value = json.loads(tokenizer.decode(tokens[:-1]))
        assert set(value) == {"ok", "answer"} and isinstance(value["ok"], bool) and value["answer"] in SCHEMA[
            "properties"]["answer"]["enum"]
    free, _ = asyncio.run(collect(engine, ids, greedy(16, stops)))
    assert not tokenizer.decode(free).startswith("{"), "unconstrained, the untrained model writes no JSON"


def test_logprobs_are_the_models_own(engine, reference, tokenizer):
    ids = prompt(tokenizer, QUESTIONS[1])

    async def run():
        deltas = []
        async for delta in engine.generate(ids, SamplingParams(max_tokens=6, temperature=0, logprobs=3)):
            deltas.append(delta)
        return deltas

    entries = [lp for delta in asyncio.run(run()) for lp in delta.logprobs]
    tokens = [lp.token_id for lp in entries]
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1], dim=-1)
    for step, entry in enumerate(entries):
        assert len(entry.top) == 3 and entry.top[0][0] == entry.token_id, "greedy takes the likeliest"
        assert entry.logprob == pytest.approx(float(expected[step, entry.token_id]), abs=1e-4)
        assert [v for _, v in entry.top] == sorted((v for _, v in entry.top), reverse=True)


def test_messages_send_the_first_token_at_once_then_group_until_enough_tokens_or_time():
    closed = []

    async def deltas():
        try:
            for i in range(9):
                yield Delta([i], "length" if i == 8 else None)
        finally:
            closed.append(True)

    async def grouped(min_tokens, max_delay_s=60.0, clock=lambda: 0.0):
        return [d.token_ids for d in [m async for m in in_messages(deltas(), min_tokens, max_delay_s, clock)]]

    assert asyncio.run(grouped(4)) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert asyncio.run(grouped(5)) == [[0], [1, 2, 3, 4, 5], [6, 7, 8]]  # the end is sent however short
    assert asyncio.run(grouped(1)) == [[i] for i in range(9)]
    # A slow model: a token every 30 ms on this clock, and a message at most 50 ms after the last.
    ticks = iter(range(0, 1000, 30))
    assert asyncio.run(grouped(16, 0.050, lambda: next(ticks) / 1000)) == [[0], [1, 2], [3, 4], [5, 6], [7, 8]]

    async def leave_after_first():
        messages = in_messages(deltas(), 4, 60.0)
        await anext(messages)
        await messages.aclose()  # the client went away

    closed.clear()
    asyncio.run(leave_after_first())
    assert closed == [True]  # the engine's generation was closed too, freeing its slot
