"""What tests of the OpenAI API over a `build_gateway` app share: a model name, a user turn, the SSE
framing of a stream, its tool calls put together, and the shape of an OpenAI error."""

from __future__ import annotations

import json

MODEL = "tiny"
USER = [{"role": "user", "content": "Say hello."}]


def events(response) -> list:
    """The SSE payloads of a response, `[DONE]` as a string, each one checked for framing."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "", "the stream must end with a blank line"
    out = []
    for block in blocks[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assert_error(response, status: int, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert error["type"] == type_ and error["param"] == param and error["code"] == code, error
    assert error["message"] and "Traceback" not in error["message"]
    return error


def streamed_calls(chunks: list[dict]) -> list[dict]:
    """The tool calls of a stream's chunks put together by index, as a client does: the first delta of a call
    has its id, type and name, the ones after it pieces of its arguments."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(delta["index"], {"function": {"name": "", "arguments": ""}})
            for key in ("id", "type"):
                if key in delta:
                    assert key not in call, f"a call's {key} comes once"
                    call[key] = delta[key]
            call["function"]["name"] += delta["function"].get("name", "")
            call["function"]["arguments"] += delta["function"].get("arguments", "")
    return [calls[i] for i in sorted(calls)]
