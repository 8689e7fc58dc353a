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
            print(f"solo: {error}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print("solo: interrupted", file=sys.stderr)
            return 130

    return guarded
