"""Where benchmarks read the shared data from, where they leave what they measured, and the
conditions they measured it under."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, result: dict, markdown: str) -> Path:
    """Write `results/<name>.json` (the figures, for scripts) and `.md` (the table, for people)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip("\n") + "\n")
    return RESULTS / f"{name}.md"


class Conditions:
    """The command, the machine, and its load average when a benchmark began and ended: a figure
    timed while other work shared the cores must say so. Create it before measuring."""

    def __init__(self):
        # The benchmark as it was run, flags included, so the figures can be reproduced.
        self.command = " ".join([f".venv/bin/python -m benchmarks.{Path(sys.argv[0]).stem}",
                                 *map(shlex.quote, sys.argv[1:])])
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        self.machine = (f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
                        f"{memory_gib:.0f} GiB")
        self.load_average = [round(os.getloadavg()[0], 1)]

    def end(self) -> dict:
        """The conditions as result fields; call once, when the measuring is over."""
        if len(self.load_average) == 1:
            self.load_average.append(round(os.getloadavg()[0], 1))
        return self._fields(self.load_average)

    def so_far(self) -> dict:
        """Like `end`, for a result written before the measuring is over; `end` stays callable."""
        return self._fields([self.load_average[0], round(os.getloadavg()[0], 1)])

    def _fields(self, load_average: list[float]) -> dict:
        return {"command": self.command, "machine": self.machine, "load_average": load_average}

    def sentence(self) -> str:
        return ran_on(self.end())


def ran_on(result: dict) -> str:
    """The line under a results title, from the fields `Conditions.end` put in the result."""
    before, after = result["load_average"]
    return f"`{result['command']}` on {result['machine']} (load average {before} before, {after} after)."
