"""The CPU engine on architectures other than Llama, from half-precision checkpoints: what it decodes greedily
for requests that join a running batch and leave it is what transformers' own `generate` decodes for each
alone, in fp32, sliding-window attention (a window shorter than the prompts) included."""

from __future__ import annotations

import asyncio

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from solo.serving.cpu_engine import CpuEngine
from solo.serving.engine import SamplingParams
from tests.waits import until

SIZE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, pad_token_id=0)
# architecture: (its config class, the settings beyond SIZE), saved in this precision
ARCHITECTURES = {
    "Qwen3ForCausalLM": ("Qwen3Config", dict(head_dim=16), torch.bfloat16),
    "Gemma2ForCausalLM": ("Gemma2Config", dict(head_dim=16, sliding_window=8), torch.bfloat16),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=8), torch.bfloat16),
    "Phi3ForCausalLM": ("Phi3Config", {}, torch.float16),
    "MistralForCausalLM": ("MistralConfig", dict(sliding_window=8), torch.float16),
    "Qwen2ForCausalLM": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
                         torch.bfloat16),
}
PROMPTS = [list(range(5, 25)), list(range(40, 45)), list(range(100, 131))]
NEW_TOKENS = 16


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    config_class, settings, dtype = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    model = getattr(transformers, request.param)(getattr(transformers, config_class)(**SIZE, **settings))
    folder = tmp_path_factory.mktemp(request.param)
    model.to(dtype).save_pretrained(folder)
    return request.param, folder


def test_any_causal_lm_decodes_as_transformers_does_while_requests_join_and_leave(checkpoint):
    architecture, folder = checkpoint
    engine = CpuEngine(folder, max_concurrent=4, threads=1)
    assert type(engine.model).__name__ == architecture
    assert {p.dtype for p in engine.model.parameters()} == {torch.float32}, "half precision computes in fp32"
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = [reference.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW_TOKENS,
                                   min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
                for p in PROMPTS]
    produced: list[list[int]] = [[] for _ in PROMPTS]

    async def collect(i: int) -> None:
        async for delta in engine.generate(PROMPTS[i], SamplingParams(max_tokens=NEW_TOKENS, temperature=0)):
            produced[i] += delta.token_ids

    async def staggered() -> None:
        # Each joins a batch already decoding, so its rows are padded and cut beside longer ones.
        tasks = [asyncio.create_task(collect(0))]
        for i in range(1, len(PROMPTS)):
            await until(lambda i=i: len(produced[i - 1]) >= 4, f"request {i - 1}'s fourth token")
            tasks.append(asyncio.create_task(collect(i)))
        await asyncio.gather(*tasks)

    asyncio.run(staggered())
    assert produced == expected
