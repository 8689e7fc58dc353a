"""Waiting in tests, always with a deadline: a wait that could hang turns into a failure that says what
never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0, every_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(every_s)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0, every_s: float = 0.001) -> None:
    """`wait_until` for a coroutine: the event loop runs while it waits."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        await asyncio.sleep(every_s)
