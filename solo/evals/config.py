"""Settings of the evaluate stage (`evaluate:`, `configs/evaluate/`) and of `jobs.evaluate --model`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from solo.config import Schema, checkout_root

EvalTask = Literal["mmlu", "arc_challenge", "gsm8k"]


class CostConfig(Schema):
    """What the run cost: its machine-hours at this draw and price (the report card's last table)."""

    watts: float = Field(default=450.0, gt=0)
    """The machine's draw under load, in watts; an RTX 4090 board is 450 W."""
    price_per_kwh: float = Field(default=0.30, ge=0)
    """The price of a kilowatt-hour, in `currency`."""
    currency: str = "USD"
    """What the price is in."""


class ShotsConfig(Schema):
    """Worked examples before each question, taken in order from the task's dev (MMLU, ARC) or train
    (GSM8K) split, as lm-evaluation-harness does. MMLU is usually reported 5-shot and GSM8K 8-shot."""

    mmlu: int = Field(default=5, ge=0)
    """Examples before each MMLU question."""
    arc_challenge: int = Field(default=0, ge=0)
    """Examples before each ARC-Challenge question."""
    gsm8k: int = Field(default=8, ge=0)
    """Worked problems before each GSM8K problem."""


class EvalConfig(Schema):
    """Bits per byte on held-out text, benchmarks from local files, and sample answers.

    The defaults keep the demo's evaluate stage within seconds on two CPU cores (a fixed 50-question
    sample; GSM8K's generation left out); numbers to publish set max_questions: null."""

    max_documents: int = Field(default=200, ge=1)
    """Held-out documents scored for bits per byte."""
    prompts: list[str] = ["What does json.dumps do?"]
    """Questions the fine-tuned model answers in the report (greedy)."""
    max_new_tokens: int = Field(default=48, ge=1)
    """Tokens of each sample answer."""
    tasks: list[EvalTask] = ["mmlu", "arc_challenge"]
    """Benchmarks to run, read from `data_root`. Named anywhere (or `data_root` set), each must have its files
    there, else the job stops naming the path; left to this default, a task without them is left out."""
    data_root: str = "../shared/data"
    """The folder of benchmark files (mmlu/, arc_challenge/, gsm8k/); a relative path is from the repo root."""
    shots: ShotsConfig = ShotsConfig()
    """Worked examples per task."""
    max_questions: int | None = Field(default=50, ge=1)
    """A fixed seeded sample of this many questions per task; null: all."""
    batch_size: int = Field(default=16, ge=1)
    """Sequences per forward pass (scoring and generation)."""
    gsm8k_max_new_tokens: int = Field(default=256, ge=1)
    """Tokens a GSM8K answer may take."""
    seed: int = 0
    """Picks the question sample."""
    cost: CostConfig = CostConfig()
    """What a machine-hour costs, for the report card."""

    def data_path(self) -> Path:
        return (checkout_root() / Path(self.data_root).expanduser()).resolve()

    def names_its_tasks(self) -> bool:
        """Whether the tasks were asked for: `tasks` or `data_root` set (in a config file, a --set, `--task` or
        `--data`) rather than left to the defaults. A task asked for whose files are missing is a mistake; a
        default one is left out, and said so, so that a machine without the benchmark files runs the demo."""
        return bool({"tasks", "data_root"} & self.model_fields_set)
