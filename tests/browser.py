"""A real Chromium for tests of a web page: headless, with a profile of its own, driven over the DevTools
protocol (one WebSocket, no driver binary in between), stopped by its pid.

Clicks and keys go in as the browser's own input events, so the page sees what it would see from a person."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.waits import wait_until

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.fail("Chromium is not installed: `make install` installs it (cluster/system-packages.sh), "
                    "or run `apt-get install chromium`")
    return found


class Page:
    """One tab, over its DevTools WebSocket."""

    def __init__(self, websocket_url: str):
        self.socket = connect(websocket_url, max_size=None, open_timeout=30)
        self.sent = 0
        self.errors: list[str] = []  # uncaught exceptions of the page's scripts
        self.send("Runtime.enable")
        self.send("Page.enable")

    def send(self, method: str, **params) -> dict:
        self.sent += 1
        self.socket.send(json.dumps({"id": self.sent, "method": method, "params": params}))
        while True:  # events come in between; the page's uncaught errors are kept
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or details["text"])
            if message.get("id") == self.sent:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise's, once it settles)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 120.0) -> None:
        wait_until(lambda: bool(self.evaluate(expression)), what, timeout_s=timeout_s, every_s=0.1)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", f"{url} loaded")

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as the mouse makes it."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Focus the element and type `text` into it."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      **({"text": "\r"} if kind == "keyDown" else {}))

    def close(self) -> None:
        self.socket.close()


class Chromium:
    """`with Chromium(folder) as browser:` a headless Chromium whose profile (and log) is `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process: subprocess.Popen | None = None
        self.pages: list[Page] = []

    def __enter__(self) -> Chromium:
        self.folder.mkdir(parents=True, exist_ok=True)
        profile = self.folder / "profile"
        flags = ["--headless=new", f"--user-data-dir={profile}", "--remote-debugging-port=0", "--no-first-run",
                 "--no-default-browser-check", "--disable-gpu", "--disable-extensions", "--disable-sync",
                 "--disable-dev-shm-usage"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        with open(self.folder / "chromium.log", "wb") as log:
            self.process = subprocess.Popen([chromium_binary(), *flags, "about:blank"], stdout=log,
                                            stderr=subprocess.STDOUT)
        # Chromium writes the port it picked (and its own WebSocket path) into the profile once it listens.
        port_file = profile / "DevToolsActivePort"
        wait_until(lambda: self.process.poll() is not None or (port_file.is_file() and port_file.read_text().strip()),
                   "Chromium listening for DevTools", timeout_s=60)
        assert self.process.poll() is None, f"Chromium exited: {(self.folder / 'chromium.log').read_text()[-2000:]}"
        self.port = int(port_file.read_text().split()[0])
        return self

    def new_page(self) -> Page:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            page = Page(json.loads(response.read())["webSocketDebuggerUrl"])
        self.pages.append(page)
        return page

    def __exit__(self, *exc) -> None:
        for page in self.pages:
            page.close()
        self.process.terminate()  # by its pid; its renderer and GPU processes go with it
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
