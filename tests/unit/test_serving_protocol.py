"""The OpenAI request and response models on their own: what they accept, refuse and produce."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from solo.serving.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    CompletionRequest,
    DeltaMessage,
    ErrorResponse,
    Usage,
)

USER = [{"role": "user", "content": "hi"}]


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields})


def test_messages_reach_the_template_as_plain_dicts():
    r = request(messages=[
        {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "user", "content": "q", "name": "ann"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "r", "tool_call_id": "c1"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]},
    ])
    # Arguments as an object, which templates write with `tojson` (text that is no JSON object stays text); a
    # tool result keeps the id of its call, which Mistral's templates require.
    assert r.template_messages() == [
        {"role": "system", "content": "ab"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "r", "tool_call_id": "c1"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]},
    ]


def test_only_an_assistant_calling_tools_may_omit_content():
    with pytest.raises(ValidationError):
        request(messages=[{"role": "assistant", "content": None}])
    with pytest.raises(ValidationError):
        request(messages=[{"role": "user"}])


def test_max_completion_tokens_wins_over_max_tokens():
    assert request(max_tokens=5).requested_max_tokens == 5
    assert request(max_tokens=5, max_completion_tokens=9).requested_max_tokens == 9
    assert request().requested_max_tokens is None


def test_stop_is_a_string_or_up_to_four():
    assert request(stop="x").stop_strings == ["x"]
    assert request(stop=["a", "", "b"]).stop_strings == ["a", "b"]
    assert request().stop_strings == []
    with pytest.raises(ValidationError):
        request(stop=["a", "b", "c", "d", "e"])


def test_tools_are_dropped_when_tool_choice_is_none():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert request(tools=tools).template_tools() == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}}}]
    assert request(tools=tools, tool_choice="none").template_tools() is None
    assert request(tools=tools, tool_choice="auto").parses_tool_calls
    assert not request(tools=tools, tool_choice="none").parses_tool_calls


def test_a_forced_tool_must_be_one_of_the_tools():
    tools = [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]
    assert [t.function.name for t in request(tools=tools, tool_choice="required").forced_tools] == ["f", "g"]
    named = request(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})
    assert [t.function.name for t in named.forced_tools] == ["g"]
    assert request(tools=tools, tool_choice="auto").forced_tools == []
    with pytest.raises(ValidationError, match="no tool named 'h'"):
        request(tools=tools, tool_choice={"type": "function", "function": {"name": "h"}})


def test_tool_choice_needs_tools_and_response_formats_give_their_schema():
    with pytest.raises(ValidationError, match="only allowed when tools"):
        request(tool_choice="auto")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert request(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
                   ).response_format.output_schema() == schema
    assert request(response_format={"type": "json_object"}).response_format.output_schema() == {"type": "object"}
    assert request(response_format={"type": "text"}).response_format.output_schema() is None
    with pytest.raises(ValidationError, match="needs the 'json_schema' object"):
        request(response_format={"type": "json_schema"})


def test_completion_requests():
    r = CompletionRequest.model_validate({"model": "m", "prompt": "Once"})
    assert r.max_tokens == 16, "OpenAI's default for /v1/completions"
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2]}).prompt == [1, 2]
    for bad in ({"prompt": ["a", "b"]}, {"prompt": []}, {"prompt": "x", "echo": True}, {"prompt": "x", "best_of": 2},
                {"prompt": "x", "logprobs": 6}, {"prompt": "x", "suffix": "y"}, {"prompt": 5}):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"model": "m", **bad})


@pytest.mark.parametrize("fields", [
    {"temperature": "1"}, {"max_tokens": 1.5}, {"stream": 1}, {"seed": "7"}, {"n": 0}, {"n": 17},
    {"presence_penalty": 2.5}, {"frequency_penalty": "1"}, {"logprobs": 1}, {"top_logprobs": 2},
    {"logprobs": True, "top_logprobs": 21}, {"logit_bias": {"1": 5}}, {"top_p": 1.5},
    {"stream_options": {"include_usage": True}},
])
def test_wrong_types_and_unsupported_values_are_refused(fields):
    with pytest.raises(ValidationError):
        request(**fields)


def test_neutral_and_unknown_fields_are_accepted():
    r = request(n=1, logprobs=False, presence_penalty=0.5, frequency_penalty=-1.0, user="u", x_custom=[1])
    assert r.n == 1 and not hasattr(r, "x_custom")
    assert request(stream=True, stream_options={"include_usage": True}).stream_options.include_usage


def test_wire_shapes():
    usage = Usage.of(3, 4)
    assert usage.total_tokens == 7
    chunk = ChatCompletionChunk(id="c", created=1, model="m", choices=[ChunkChoice(delta=DeltaMessage(content="x"))])
    assert chunk.model_dump() == {
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "usage": None,
        "choices": [{"index": 0, "delta": {"role": None, "content": "x", "tool_calls": None}, "finish_reason": None,
                     "logprobs": None}],
    }
    error = ErrorResponse.model_validate({"error": {"message": "m", "type": "t"}})
    assert error.model_dump() == {"error": {"message": "m", "type": "t", "param": None, "code": None}}
