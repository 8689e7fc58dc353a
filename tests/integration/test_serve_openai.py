"""The real thing: Ray Serve on CPU behind the official `openai` client. One server per module,
since starting Ray Serve takes ~20s."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from solo.errors import SoloError
from solo.runtime import free_port
from solo.serving.config import ServeConfig
from solo.serving.run import serving
from tests import served

pytestmark = pytest.mark.integration

MODEL = "tiny-chat"
TWIN = "tiny-twin"  # a second model (the same weights, another folder): a deployment of its own
ADAPTER = "tiny-lora"  # a LoRA adapter on MODEL, registered in the artifact store
QUESTION = [{"role": "user", "content": "What does json.dumps do?"}]
KEY = "sk-test-only"
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter in peft's format on the tiny model, its B matrices random rather than zero
    (peft's start), so it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapter_dir, tmp_path_factory):
    from solo.store import register_adapter

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"{KEY}\n")
    twin = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("models") / TWIN)
    config = ServeConfig(models=[{"path": str(tiny_model_dir), "name": MODEL}, {"path": str(twin)}],
                         port=free_port(), max_new_tokens=32, api_keys_file=str(keys), max_concurrent=64)
    with pytest.MonkeyPatch.context() as env:
        # A private Ray for this module, whatever cluster `solo up` or RAY_ADDRESS would offer.
        env.setenv("SOLO_HOME", str(tmp_path_factory.mktemp("solo_home")))
        env.delenv("RAY_ADDRESS", raising=False)
        register_adapter(ADAPTER, adapter_dir, base_model=str(tiny_model_dir), method="lora", metrics={})
        with serving(config) as url:
            yield config, url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[1], api_key=KEY, max_retries=0, timeout=60)


def test_each_cpu_model_runs_in_an_engine_process_of_its_own_at_the_default_priority(server, tiny_model_dir):
    import os

    import psutil

    engines = [p for p in psutil.process_iter(["cmdline"])
               if "solo.serving.engine_child" in (p.info["cmdline"] or []) and any(
                   str(tiny_model_dir) in arg or arg.endswith(TWIN) for arg in p.info["cmdline"])]
    assert len(engines) == 2, "one for each model's replica"
    assert all(" ".join(p.parent().cmdline()).startswith("ray::ServeReplica:solo:LLMServer") for p in engines)
    # Ray starts its workers at niceness 15; the engines run at ours (the Ray daemons' and the clients').
    assert [p.nice() for p in engines] == [os.getpriority(os.PRIO_PROCESS, 0)] * 2


def test_serve_runs_in_its_throughput_mode_behind_its_proxy(server):
    """`solo.runtime.worker_env` puts Ray Serve in its throughput mode, less direct ingress: without
    it the serving path spends the CPU a few-core machine's engine needs."""
    import psutil

    serving = [p for p in psutil.process_iter(["cmdline"])
               if (p.info["cmdline"] or [""])[0].startswith(("ray::ProxyActor", "ray::ServeReplica:solo:"))]
    assert len(serving) == 4, "the proxy, the gateway and the two models' replicas"
    for process in serving:
        env = process.environ()
        assert (env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED"), env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS")) == ("1", "0")


def test_base_url_and_models(server, client):
    config, url = server
    assert url == f"http://127.0.0.1:{config.port}/v1"
    models = client.models.list().data
    assert [(m.id, m.parent, m.object) for m in models] == [(MODEL, None, "model"), (TWIN, None, "model"),
                                                           (ADAPTER, MODEL, "model")]


def test_completion(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    (choice,) = response.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    again = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == choice.message.content, "greedy decoding must be deterministic"


def test_streaming_matches_the_completion(client):
    kwargs = dict(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0.8, seed=11)
    full = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    *content_chunks, usage_chunk = chunks
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == full.choices[0].message.content
    assert content_chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert usage_chunk.choices == [] and usage_chunk.usage == full.usage


def test_streaming_without_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=QUESTION)
    assert caught.value.code == "model_not_found"


def test_a_bad_request_is_rejected(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=7)
    assert caught.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10_000)
    assert caught.value.code == "context_length_exceeded"


def test_malformed_json_over_raw_http(server):
    _, url = server
    request = urllib.request.Request(f"{url}/chat/completions", data=b'{"model": "tiny-chat", "messages": [',
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    error = json.loads(caught.value.read())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"


def test_a_second_server_on_the_same_port_is_refused(server, tiny_model_dir):
    config, _ = server
    with pytest.raises(SoloError, match=f"port {config.port} on 127.0.0.1 is in use"), \
            serving(ServeConfig(model=str(tiny_model_dir), port=config.port)):
        pass


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(SoloError, match="not a Hugging Face model folder"), \
            serving(ServeConfig(model=str(tmp_path), port=free_port())):
        pass
    with pytest.raises(SoloError, match="does not exist"), \
            serving(ServeConfig(model=str(tmp_path / "nothing"), port=free_port())):
        pass


def test_a_text_completion_streamed_and_not(client):
    full = client.completions.create(model=MODEL, prompt="def main():", max_tokens=10, temperature=0)
    (choice,) = full.choices
    assert full.object == "text_completion" and choice.finish_reason in ("stop", "length")
    chunks = list(client.completions.create(model=MODEL, prompt="def main():", max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage == full.usage


# Small enough that its description fits the tiny model's 256-token window beside a question.
WEATHER = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "soon": {"type": "boolean"}},
    "required": ["unit", "soon"], "additionalProperties": False}}}]


def test_tools_are_offered_and_a_forced_call_obeys_the_function_schema(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, max_tokens=8)
    message = response.choices[0].message
    assert message.tool_calls is None or all(call.function.name for call in message.tool_calls)
    # Even an untrained model calls the named function, with arguments its schema allows. It may spell the call in
    # one-character tokens: it gets what the window leaves after the prompt (202 tokens).
    forced = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=WEATHER, max_tokens=54, temperature=0,
                                            tool_choice={"type": "function", "function": {"name": "weather"}})
    (call,) = forced.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "weather" and forced.choices[0].finish_reason == "tool_calls"
    assert arguments["unit"] in ("c", "f") and isinstance(arguments["soon"], bool)
    streamed = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=WEATHER, max_tokens=54,
                                              temperature=0, tool_choice="required", stream=True)
    deltas = [c for chunk in streamed for c in (chunk.choices[0].delta.tool_calls or []) if chunk.choices]
    # As OpenAI streams a call: its first delta names it, the ones after add to its arguments.
    assert {c.index for c in deltas} == {0} and [c.function.name for c in deltas[:1]] == ["weather"]
    assert all(c.function.name is None for c in deltas[1:])
    arguments = json.loads("".join(c.function.arguments or "" for c in deltas))
    assert arguments["unit"] in ("c", "f") and isinstance(arguments["soon"], bool)


def test_response_format_json_schema_gives_json_that_matches(client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=48, temperature=0,
                                              response_format={"type": "json_schema", "json_schema": {
                                                  "name": "verdict", "schema": schema, "strict": True}})
    value = json.loads(response.choices[0].message.content)
    assert value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}}})
    assert caught.value.param == "response_format"


def test_a_missing_or_wrong_api_key_is_a_401(server):
    _, url = server
    wrong = openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with urllib.request.urlopen(f"{url.removesuffix('/v1')}/health", timeout=30) as response:
        assert response.status == 200, "health needs no key"


def test_metrics_are_served(server, client):
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
    names = {(s.name, s.labels.get("model_name")) for s in served.samples(served.metrics_text(server[1], KEY))}
    for name in ("solo_requests_total", "vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:time_to_first_token_seconds_count", "vllm:generation_tokens_total"):
        assert (name, MODEL) in names, name


def test_a_client_that_leaves_mid_stream_stops_its_generation_and_frees_its_slot(server, client):
    budget = 200
    kwargs = dict(model=MODEL, messages=QUESTION, max_tokens=budget, temperature=0)
    # Read to its end, this request takes its whole budget: fewer tokens below can only be a cut.
    assert client.chat.completions.create(**kwargs).usage.completion_tokens == budget
    before = served.scrape(server[1], "vllm:generation_tokens_total", MODEL, KEY)
    with client.chat.completions.create(**kwargs, stream=True) as stream:
        assert next(iter(stream)).choices[0].delta.role == "assistant"
    # Leaving the block closed the connection: the gateway stops streaming, gives back the request's
    # admission, and closes the replica's stream, which aborts the sequence in the engine process
    # (tests/unit/test_engine_process.py); the replica then counts it no more.
    if not served.frees_its_slots(server[1], MODEL, KEY):
        pytest.fail("the generation of a client that left still holds its slot a minute later")
    assert served.scrape(server[1], "vllm:generation_tokens_total", MODEL, KEY) - before < budget


def test_64_concurrent_clients_all_succeed(server, client):
    """Half streamed, half not, all at once: every one gets the whole greedy answer the model gives a lone
    request (the CPU engine decodes a batch as each sequence alone), with its usage counted."""
    _, url = server
    alone = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    expected = alone.choices[0].message.content
    assert expected and alone.usage.completion_tokens >= 1

    async def load():
        async with openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120) as concurrent:
            async def one(i: int) -> tuple[str, int]:
                if i % 2:
                    stream = await concurrent.chat.completions.create(
                        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, stream=True,
                        stream_options={"include_usage": True})
                    chunks = [c async for c in stream]
                    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), \
                        chunks[-1].usage.completion_tokens
                response = await concurrent.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8,
                                                                     temperature=0)
                return response.choices[0].message.content, response.usage.completion_tokens

            return await asyncio.gather(*(one(i) for i in range(64)), return_exceptions=True)

    results = asyncio.run(load())
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [(expected, alone.usage.completion_tokens)] * 64


def test_listening_beyond_loopback_without_keys_is_refused(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("SOLO_API_KEYS", raising=False)
    with pytest.raises(SoloError, match="no API keys"), \
            serving(ServeConfig(model=str(tiny_model_dir), host="0.0.0.0", port=free_port())):
        pass


def test_n_choices_and_logprobs_through_the_official_client(client):
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, n=2, seed=3,
                                              logprobs=True, top_logprobs=2)
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        content = choice.logprobs.content
        assert content and all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in content)
        assert bytes(b for entry in content for b in entry.bytes).decode(errors="replace") == choice.message.content
    again = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, n=2, seed=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in response.choices]


def merged_greedy_answer(base: Path, adapter: Path, max_tokens: int) -> str:
    """What the adapter merged into the base answers QUESTION, greedily, run here with no server."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from solo.tokens.tokenizer import load, render_chat, stop_token_ids

    tokenizer = load(base)
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload().eval()
    ids, _ = render_chat(tokenizer, QUESTION, None, add_generation_prompt=True)
    stops, answer = set(stop_token_ids(tokenizer)), []
    with torch.inference_mode():
        for _ in range(max_tokens):
            token = int(model(torch.tensor([ids + answer])).logits[0, -1].argmax())
            if token in stops:
                break
            answer.append(token)
    return tokenizer.decode(answer, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_several_models_and_an_adapter_each_answer_by_name(client, tiny_model_dir, adapter_dir):
    def answer(model: str, **extra) -> str:
        return client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0,
                                              **extra).choices[0].message.content

    base, tuned = answer(MODEL), answer(ADAPTER)
    assert answer(TWIN) == base, "the second model's own deployment, with the same weights, says the same"
    assert tuned == merged_greedy_answer(tiny_model_dir, adapter_dir, 12), "the adapter is applied as peft merges it"
    assert tuned != base, "the adapter changes the answer"
    streamed = client.chat.completions.create(model=ADAPTER, messages=QUESTION, max_tokens=12, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == tuned
