"""What tests of the OpenAI API over a `build_gateway` app share: a model name, a user turn, the SSE
framing of a stream and the shape of an OpenAI error."""

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
