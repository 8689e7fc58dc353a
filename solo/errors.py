"""The one exception type a user sees as a single line, not a traceback, and the guard that prints it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class SoloError(Exception):
    """A problem the user can fix: its message says what to do."""


def main_guard(main: Callable[..., int | None]) -> Callable[..., int]:
    """Run `main`; a SoloError (something the user can fix) ends it with one line and exit code 2."""

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except SoloError as error:
            _leave_ray()
            print(f"solo: {error}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print("solo: interrupted", file=sys.stderr)
            return 130

    return guarded


def _leave_ray() -> None:
    """Leave the Ray cluster this process joined, if any (stopping a private one), so that the lines its
    workers still send stop before the error is printed: the error is the last line the user sees."""
    ray = sys.modules.get("ray")  # not imported here: a command that never used Ray should not load it
    if ray is not None and ray.is_initialized():
        ray.shutdown()
