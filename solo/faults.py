"""Faults injected at named points of the stages, for the tests of what survives them; inert unless a test
sets SOLO_FAULTS.

    SOLO_FAULTS="data.staged=kill,train.checkpoint.written=kill@2"

At `fault_point("data.staged")` the process then kills itself with SIGKILL, as `kill -9` or a power cut
would: no cleanup, no exception handler, no flush. `crash` exits with status 1 (a process dying of a
bug it does not report), `mistake` raises a SoloError (something the user must fix). `@N` fires at the
N-th time the point is reached in one process (default the first). Each fault fires once in all: the
process that fires it leaves a marker in SOLO_FAULTS_DIR, and a rerun passes the point, as a real rerun
after a real kill would.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from solo.errors import SoloError

ENV, STATE_ENV = "SOLO_FAULTS", "SOLO_FAULTS_DIR"
ACTIONS = ("kill", "crash", "mistake")
_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A point where a test may inject a fault (see the module's docstring). Costs a dict lookup otherwise."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    faults = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    if name not in faults:
        return
    action, _, nth = faults[name].partition("@")
    _reached[name] = _reached.get(name, 0) + 1
    if action not in ACTIONS or _reached[name] != int(nth or 1):
        return
    marker = Path(os.environ.get(STATE_ENV) or ".") / f"fired-{name}"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with marker.open("x"):  # only the first process to get here fires it
            pass
    except FileExistsError:
        return
    print(f"solo.faults: {action} at {name}", file=sys.stderr, flush=True)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "crash":
        os._exit(1)
    raise SoloError(f"a mistake injected at {name}")
