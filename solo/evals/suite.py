"""A benchmark run end to end: questions from local files, scored, and `<task>/metrics.json`
written beside `<task>/samples.jsonl` (every question with what the model chose, for reading).

The numbers are a function of the checkpoint and the settings alone: the question sample is
seeded, decoding is greedy, and scoring runs in a fixed order, so a rerun gives the same file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from solo.errors import SoloError
from solo.evals import tasks
from solo.evals.config import EvalConfig
from solo.evals.generate import cpu_engine, greedy
from solo.evals.likelihood import loglikelihoods
from solo.evals.tasks import MissingData, Problem, Question
from solo.faults import fault_point
from solo.serving.engine import Engine
from solo.store import write_json_atomic


def score_multiple_choice(model, tokenizer, questions: Sequence[Question], batch_size: int) -> tuple[dict, list[dict]]:
    """Accuracy by the highest log-likelihood, and by the highest per byte of the choice (lm-eval's
    `acc_norm`, which stops long answers losing for their length alone), overall and per subject."""
    requests = [(q.context, choice) for q in questions for choice in q.choices]
    scored = iter(loglikelihoods(model, tokenizer, requests, batch_size))
    samples = []
    for q in questions:
        logprobs = [next(scored).logprob for _ in q.choices]
        per_byte = [lp / len(c.encode()) for lp, c in zip(logprobs, q.choices)]
        samples.append({"id": q.id, "subject": q.subject, "answer": q.answer, "chosen": _argmax(logprobs),
                        "chosen_norm": _argmax(per_byte), "logprobs": [round(lp, 4) for lp in logprobs]})
    subjects = sorted({s["subject"] for s in samples})
    metrics = {**_accuracy(samples), "per_subject": {
        subject: _accuracy([s for s in samples if s["subject"] == subject]) for subject in subjects}}
    return metrics, samples


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))   # a tie goes to the first


def _accuracy(samples: list[dict]) -> dict:
    n = len(samples)
    return {"accuracy": round(sum(s["chosen"] == s["answer"] for s in samples) / n, 6),
            "accuracy_norm": round(sum(s["chosen_norm"] == s["answer"] for s in samples) / n, 6), "n": n}


# lm-eval's gsm8k stops at the next question; a model that never learnt the format stops at a blank line.
GSM8K_STOP = ("Question:", "\n\n")


def score_gsm8k(engine: Engine, tokenizer, problems: Sequence[Problem], max_new_tokens: int
                ) -> tuple[dict, list[dict]]:
    """Exact match of the number after "#### " in the reply with the reference's; the replies come
    from the serving engine, every problem in flight at once."""
    replies = greedy(engine, tokenizer, [p.context for p in problems], max_new_tokens, GSM8K_STOP)
    samples = [{"id": p.id, "target": p.target, "extracted": tasks.gsm8k_answer(reply), "reply": reply}
               for p, reply in zip(problems, replies)]
    correct = sum(s["extracted"] == s["target"] for s in samples)
    return {"accuracy": round(correct / len(samples), 6), "n": len(samples)}, samples


def run_task(name: str, model, tokenizer, config: EvalConfig, output: Path, resume: bool = False) -> dict:
    """One task on its configured sample; writes `output/<name>/{metrics.json,samples.jsonl}`, metrics.json
    last. `resume`: a task whose metrics.json is there with these settings is not run again (the evaluate
    stage's folder holds the results of these very models)."""
    root, shots = config.data_path(), getattr(config.shots, name)
    settings = {"shots": shots, "max_questions": config.max_questions, "seed": config.seed,
                "batch_size": config.batch_size, "split": "test", "format": f"lm-evaluation-harness {name}"}
    if name == "gsm8k":
        settings["max_new_tokens"] = config.gsm8k_max_new_tokens
    done = output / name / "metrics.json"
    if resume and done.is_file() and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())
    if name == "gsm8k":
        problems = tasks.sample(tasks.gsm8k(root, shots), config.max_questions, config.seed)
        metrics, samples = score_gsm8k(cpu_engine(model, config.batch_size), tokenizer, problems,
                                       config.gsm8k_max_new_tokens)
    else:
        load = {"mmlu": tasks.mmlu, "arc_challenge": tasks.arc_challenge}[name]
        questions = tasks.sample(load(root, shots), config.max_questions, config.seed)
        metrics, samples = score_multiple_choice(model, tokenizer, questions, config.batch_size)
    metrics = {"task": name, **metrics, "settings": settings}
    folder = output / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    write_json_atomic(folder / "metrics.json", metrics)  # last: its presence says the task is done
    return metrics


def check_task_data(config: EvalConfig) -> dict[str, Path]:
    """The configured tasks whose files are missing, each with the path it looked for. A task asked for
    (`config.names_its_tasks()`) without its files is a mistake, raised at once naming that path: a run
    never reports a benchmark it did not score. The defaults' tasks are only returned, to be left out."""
    root = config.data_path()
    missing = {name: path for name in config.tasks if (path := tasks.missing_data(name, root)) is not None}
    if missing and config.names_its_tasks():
        name, path = next(iter(missing.items()))
        raise SoloError(f"evaluate: task {name} has no data: {path} is not there (pass --data DIR with the "
                        "benchmark files, set evaluate.data_root, or leave the task out)")
    return missing


def run_tasks(model, tokenizer, config: EvalConfig, output: Path, log: Callable[[str], None] = print,
              resume: bool = False) -> dict[str, dict]:
    """Every configured task, scored; see check_task_data for a task whose files are missing (a default one
    is left out, and the log says where it looked, so a machine without the benchmark files still evaluates
    bits per byte)."""
    missing = check_task_data(config)
    for name, path in missing.items():
        log(f"evaluate: {name} not run: no benchmark data at {path} (the default data_root; set it to score {name})")
    results = {}
    for name in (name for name in config.tasks if name not in missing):
        earlier = resume and (output / name / "metrics.json").is_file()
        try:
            results[name] = run_task(name, model, tokenizer, config, output, resume)
        except MissingData as gone:  # removed since the check: still a benchmark that was not scored
            raise SoloError(f"evaluate: task {name} has no data: {gone}") from None
        fault_point("evaluate.task")
        log(f"evaluate: {name} accuracy {results[name]['accuracy']:.3f} on {results[name]['n']} questions "
            f"({getattr(config.shots, name)}-shot)" + (" (committed by an earlier attempt)" if earlier else ""))
    return results
