"""Three model families at once on real Ray Serve, each its own CPU engine process, behind the official `openai`
client: a Qwen2 with Hermes' tool-call markup, a Llama with Llama 3's JSON calls and a Mistral with
[TOOL_CALLS] (tests/families.py: tiny, random, half-precision checkpoints). Forced calls come back valid
against the tool's schema, whole and streamed, and a tool's result is taken as a turn. One server for the
module (starting Ray Serve takes ~20 s)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import ray

from solo.runtime import free_port, init_ray
from solo.serving.config import ServeConfig
from solo.serving.run import serving
from tests.families import FAMILY_NAMES

pytestmark = pytest.mark.integration

FORECAST = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "soon": {"type": "boolean"},
                                             "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["unit", "soon", "days"], "additionalProperties": False}
LOOKUP = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 6}}, "required": ["q"],
          "additionalProperties": False}
SCHEMAS = {"forecast": FORECAST, "lookup": LOOKUP}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": schema}} for name, schema in SCHEMAS.items()]
QUESTION = [{"role": "user", "content": "Will it rain in Paris?"}]


@pytest.fixture(scope="module")
def client(families, tmp_path_factory):
    # The model named after its family; its tool-call markup is told from its chat template.
    config = ServeConfig(models=[{"path": str(families[name].folder), "name": name} for name in FAMILY_NAMES],
                         port=free_port(), max_new_tokens=64, max_concurrent=4)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOLO_HOME", str(tmp_path_factory.mktemp("solo_home")))
        env.delenv("RAY_ADDRESS", raising=False)
        # A private Ray with a logical CPU for each model's replica, on however few cores.
        init_ray(num_cpus=len(FAMILY_NAMES))
        try:
            with serving(config) as url:
                yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        finally:
            ray.shutdown()


def valid_call(call, name: str | None = None) -> None:
    assert call.type == "function" and call.id
    assert name is None or call.function.name == name
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_three_families_are_served_at_once(client):
    assert sorted(model.id for model in client.models.list().data) == sorted(FAMILY_NAMES)


@pytest.mark.parametrize("model", FAMILY_NAMES)
def test_a_forced_call_is_valid_against_the_schema_whole_and_streamed(client, model):
    named = {"type": "function", "function": {"name": "forecast"}}
    for choice in (named, "required"):
        whole = client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS, tool_choice=choice,
                                               temperature=0, max_tokens=64)
        assert whole.choices[0].message.tool_calls, whole.choices[0]
        (call,) = whole.choices[0].message.tool_calls
        valid_call(call, "forecast" if choice == named else None)
        assert whole.choices[0].finish_reason == "tool_calls"
        # Streamed as OpenAI streams a call: id and name first, then the arguments, put together by index.
        name, arguments, ids, finish = "", "", set(), None
        for chunk in client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS, tool_choice=choice,
                                                    temperature=0, max_tokens=64, stream=True):
            for delta in chunk.choices[0].delta.tool_calls or []:
                assert delta.index == 0
                ids |= {delta.id} if delta.id else set()
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert len(ids) == 1 and finish == "tool_calls"
        assert (name, arguments) == (call.function.name, call.function.arguments), "greedy: as the whole answer"


@pytest.mark.parametrize("model", FAMILY_NAMES)
def test_a_tool_result_turn_is_taken(client, model):
    forced = client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS, temperature=0,
                                            max_tokens=48, tool_choice={"type": "function",
                                                                        "function": {"name": "lookup"}})
    (call,) = forced.choices[0].message.tool_calls
    # The call goes back as the assistant's turn, with its id, and the tool's result after it.
    conversation = [*QUESTION, forced.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": '{"rain": false}'}]
    answer = client.chat.completions.create(model=model, messages=conversation, tools=TOOLS, max_tokens=8, seed=0)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
