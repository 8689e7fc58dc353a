"""Our model as an lm-evaluation-harness `LM`, so any of the harness's tasks runs on it wherever
that task's data is present (no network: point a task config at local files, as `mmlu_task` does).

    pip install -e '.[eval]'
    from solo.evals.harness import SoloLM, mmlu_task
    import lm_eval
    lm_eval.simple_evaluate(model=SoloLM("path/to/model"), tasks=[mmlu_task(root, "anatomy")], num_fewshot=5)

Requests are answered by the same functions solo's own scorer uses (likelihood.py, generate.py),
so the harness measures our prompts and data handling against its own, not two model wrappers.
The import of lm_eval fails clearly when the extra is not installed.
"""

from __future__ import annotations

from pathlib import Path

from solo.errors import SoloError
from solo.evals.model import load_model

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as missing:  # the optional extra `eval`
    raise SoloError("the lm-evaluation-harness bridge needs the `eval` extra: pip install -e '.[eval]'") from missing

from solo.evals.generate import cpu_engine, greedy
from solo.evals.likelihood import loglikelihoods, text_loglikelihood


@register_model("solo")
class SoloLM(LM):
    """`lm_eval --model solo --model_args pretrained=PATH,batch_size=16` once this module is imported."""

    def __init__(self, pretrained: str | Path, batch_size: int | str = 16, max_gen_toks: int | str = 256):
        super().__init__()

        self.model, self.tokenizer = load_model(pretrained)
        self.batch_size, self.max_gen_toks = int(batch_size), int(max_gen_toks)
        self.engine = cpu_engine(self.model, self.batch_size)  # generation runs as `solo serve` runs it

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        scored = loglikelihoods(self.model, self.tokenizer, [r.args for r in requests], self.batch_size)
        return [(s.logprob, s.is_greedy) for s in scored]

    def loglikelihood_rolling(self, requests) -> list[float]:
        return [text_loglikelihood(self.model, self.tokenizer, r.args[0]) for r in requests]

    def generate_until(self, requests) -> list[str]:
        # Requests with the same settings generate as one batch; only greedy decoding is offered.
        replies: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            kwargs = dict(request.args[1])
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault((until, int(kwargs.get("max_gen_toks", self.max_gen_toks))), []).append(i)
        for (until, max_new), indices in groups.items():
            prompts = [requests[i].args[0] for i in indices]
            for i, reply in zip(indices, greedy(self.engine, self.tokenizer, prompts, max_new, until)):
                replies[i] = reply
        return replies


def mmlu_task(root: Path, subject: str) -> dict:
    """lm-eval's `mmlu_<subject>` config (default variant, verbatim prompt) reading our local CSVs
    instead of the Hugging Face hub; pass it in `tasks=[...]`."""
    root = Path(root)
    choices = "\n".join(f"{letter}. {{{{choice{i}}}}}" for i, letter in enumerate("ABCD"))
    return {
        "task": f"solo_mmlu_{subject}",
        "dataset_path": "csv",
        "dataset_kwargs": {"data_files": {"dev": str(root / "mmlu" / "dev" / f"{subject}_dev.csv"),
                                          "test": str(root / "mmlu" / "test" / f"{subject}_test.csv")}},
        "test_split": "test",
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice",
        "description": "The following are multiple choice questions (with answers) about "
                       f"{subject.replace('_', ' ')}.\n\n",
        "doc_to_text": "{{question.strip()}}\n" + choices + "\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def run(lm: LM, tasks: list[str | dict], num_fewshot: int | None = None, limit: int | None = None) -> dict[str, dict]:
    """The harness's results per task. Built-in tasks are named; configs given as dicts (local files)
    skip indexing the built-in ones, which takes longer than a small evaluation."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=any(isinstance(t, str) for t in tasks))
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                   task_manager=manager)["results"]
