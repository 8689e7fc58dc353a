"""The chat page at `/` in a real headless Chromium, over a real `solo serve` of the tiny model: it lists the
models, asks for the API key when the API wants one, and shows the answer as it streams in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from solo.config import REPO_ROOT
from solo.runtime import free_port
from solo.serving.run import wait_until_healthy
from tests import served
from tests.browser import Chromium, Page

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
KEY = "sk-chat-page-test"
QUESTION = "What does json.dumps do?"
# Records what the page sends to the API, so the test can see it asked for a stream.
SPY_ON_FETCH = """(() => {
  window.sentBodies = [];
  const fetch = window.fetch;
  window.fetch = (url, options = {}) => {
    if (options.body) window.sentBodies.push({url: String(url), body: JSON.parse(options.body)});
    return fetch(url, options);
  };
})()"""
ANSWER = "document.querySelector('#messages .message.assistant')"


@contextmanager
def solo_serve(model: Path, home: Path, keys: str | None = None) -> Iterator[str]:
    """`solo serve --model MODEL` in a process of its own, with a private Ray; yields its root URL, and stops it
    (by its pid, with the Ctrl-C it answers to) on the way out."""
    env = {**os.environ, "SOLO_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    env.pop("SOLO_API_KEYS", None)
    if keys:
        env["SOLO_API_KEYS"] = keys
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "serve.log", "wb") as log:
        server = subprocess.Popen([BIN / "solo", "serve", "--model", str(model), "--port", str(port),
                                   "--set", "max_new_tokens=48"], env=env, cwd=REPO_ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(root, timeout_s=300, server=server)
        yield root
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path) -> Iterator[Chromium]:
    with Chromium(tmp_path / "chromium") as chromium:
        yield chromium


def ask_and_see_the_answer_stream_in(page: Page, model: str) -> str:
    page.wait_for("document.querySelector('#model').options.length > 0", "the models listed")
    assert page.evaluate("[...document.querySelector('#model').options].map(o => o.value)") == [model]
    page.evaluate(SPY_ON_FETCH)
    page.type("#prompt", QUESTION)
    page.click("#send")
    page.wait_for(f"{ANSWER}?.textContent.length > 0", "streamed text in the answer area")
    page.wait_for(f"['done', 'failed'].includes({ANSWER}.dataset.state)", "the answer's end")
    assert page.evaluate(f"{ANSWER}.dataset.state") == "done", page.evaluate("document.body.innerText")
    assert page.evaluate("document.querySelector('#messages .message.user').textContent") == QUESTION
    (sent,) = page.evaluate("window.sentBodies")
    assert sent["url"].endswith("v1/chat/completions")
    assert sent["body"] == {"model": model, "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    assert page.errors == []
    return page.evaluate(f"{ANSWER}.textContent")


def test_the_chat_page_streams_an_answer(tiny_model_dir, tmp_path, browser):
    with solo_serve(tiny_model_dir, tmp_path / "home") as root:
        page = browser.new_page()
        page.open(f"{root}/")
        answer = ask_and_see_the_answer_stream_in(page, tiny_model_dir.name)
        assert answer and page.evaluate("document.querySelector('#key-form').hidden") is True, "no key asked"
        # A second question goes with the first turn and its answer: it is one conversation.
        page.type("#prompt", "And json.loads?")
        page.press_enter()
        page.wait_for("document.querySelectorAll('#messages .message.assistant').length === 2 && "
                      "document.querySelectorAll('#messages .message.assistant')[1].dataset.state === 'done'",
                      "the second answer")
        (second,) = page.evaluate("window.sentBodies.slice(1)")
        assert second["body"]["messages"] == [{"role": "user", "content": QUESTION},
                                              {"role": "assistant", "content": answer},
                                              {"role": "user", "content": "And json.loads?"}]


def test_with_keys_on_the_page_asks_for_the_key_and_sends_it(tiny_model_dir, tmp_path, browser):
    with solo_serve(tiny_model_dir, tmp_path / "home", keys=f"page={KEY}") as root:
        page = browser.new_page()
        page.open(f"{root}/")
        page.wait_for("!document.querySelector('#key-form').hidden", "the page asking for the key")
        assert page.evaluate("document.querySelector('#model').disabled") is True
        page.type("#api-key", "sk-wrong")
        page.press_enter()
        page.wait_for("document.querySelector('#status').textContent.includes('refused')", "a wrong key refused")
        page.type("#api-key", KEY)
        page.click("#use-key")
        page.wait_for("document.querySelector('#key-form').hidden", "the key taken")
        ask_and_see_the_answer_stream_in(page, tiny_model_dir.name)
        assert page.evaluate("sessionStorage.getItem('solo-api-key')") == KEY, "kept for this tab only"
        charged = [s for s in served.samples(served.metrics_text(f"{root}/v1", KEY))
                   if s.name == "solo_api_key_generation_tokens_total"]
        assert [(s.labels["key_name"], s.value > 0) for s in charged] == [("page", True)], json.dumps(
            [s._asdict() for s in charged])
