"""`solo serve` over vLLM, end to end: Ray Serve's proxy, the gateway and an `LLMServer` replica over
`VllmEngine`, driven by the official `openai` client. On an NVIDIA GPU, or on vLLM's CPU build
(`num_gpus: 0`); tests/gpu/conftest.py skips them, saying why, elsewhere. The API itself is tested
over the CPU engine in tests/integration/test_serve_openai.py; this checks what vLLM's side adds:
its structured outputs, logprobs, LoRA requests and aborts behind the same gateway."""

from __future__ import annotations

import json

import openai
import pytest

from solo.runtime import free_port
from solo.serving.config import ServeConfig, ServedModelConfig
from solo.serving.run import serving
from solo.serving.vllm_engine import vllm_device
from tests import served

pytestmark = [pytest.mark.gpu, pytest.mark.integration]

MODEL, ADAPTER = "tiny", "tiny-lora"
QUESTION = [{"role": "user", "content": "What does json.dumps do?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_lora, tmp_path_factory):
    from solo.store import register_adapter

    model = ServedModelConfig(path=str(tiny_model_dir), name=MODEL, engine="vllm",
                              num_gpus=0.3 if vllm_device() == "cuda" else 0)
    config = ServeConfig(models=[model], port=free_port(), max_new_tokens=32)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOLO_HOME", str(tmp_path_factory.mktemp("solo_home")))
        env.delenv("RAY_ADDRESS", raising=False)
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # vLLM's CPU build only: 1 GiB of KV cache is plenty
        register_adapter(ADAPTER, tiny_lora.folder, base_model=str(tiny_model_dir), method="lora", metrics={})
        with serving(config) as url:
            yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def test_streamed_and_whole_answers_agree(client):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 0


def test_json_schema_output_parses_and_ends(client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    response = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=60, temperature=0.8, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    value = json.loads(response.choices[0].message.content)
    assert value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)
    assert response.choices[0].finish_reason == "stop", "the grammar ends the answer, not max_tokens"


def test_a_forced_tool_call_has_arguments_its_schema_allows(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
        "additionalProperties": False}}}]
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=60, temperature=0.8,
                                              seed=2, tools=tools, tool_choice="required")
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and len(json.loads(call.function.arguments)["city"]) <= 12
    assert response.choices[0].finish_reason == "tool_calls"


def test_logprobs_come_through(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, temperature=0,
                                              logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)


def test_an_adapter_is_served_by_name(client, tiny_lora):
    assert [(m.id, m.parent) for m in client.models.list().data] == [(MODEL, None), (ADAPTER, MODEL)]
    prompt = tiny_lora.prompt_ids
    tuned = client.completions.create(model=ADAPTER, prompt=prompt, max_tokens=12, temperature=0)
    base = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert tuned.choices[0].text != base.choices[0].text, "the adapter changes what the model says"


def test_a_client_that_leaves_frees_its_slot(server, client):
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=200, temperature=0,
                                            stream=True)
    next(iter(stream))
    stream.close()
    assert served.frees_its_slots(server, MODEL), "the generation of a client that left still holds its slot"
