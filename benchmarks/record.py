"""Where benchmarks read the shared data from, and where they leave what they measured."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, result: dict, markdown: str) -> Path:
    """Write `results/<name>.json` (the figures, for scripts) and `.md` (the table, for people)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip("\n") + "\n")
    return RESULTS / f"{name}.md"
