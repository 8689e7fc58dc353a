"""Benchmark files into prompts: the layouts of the shared data, in lm-eval's formats."""

import csv
import json
from pathlib import Path

import pytest

from jobs import evaluate as evaluate_job
from jobs import pipeline as pipeline_job
from solo.config import load_config
from solo.errors import SoloError
from solo.evals import tasks
from solo.evals.config import EvalConfig
from solo.evals.suite import check_task_data


def write_benchmarks(root: Path) -> Path:
    """Two MMLU subjects, four ARC questions and three GSM8K problems, in the shared data's layouts."""
    for split, count in (("dev", 2), ("test", 3)):
        for subject in ("anatomy", "high_school_physics"):
            (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
            with (root / "mmlu" / split / f"{subject}_{split}.csv").open("w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
                for i in range(count):
                    out.writerow([f" {subject} {split} q{i}? ", "red", "green, blue", "cyan", "m", i % 4])
    (root / "arc_challenge").mkdir(parents=True, exist_ok=True)
    for split in ("Dev", "Test"):
        with (root / "arc_challenge" / f"ARC-Challenge-{split}.jsonl").open("w") as f:
            for i in range(4):
                labels = "ABCD" if i % 2 else "123"
                f.write(json.dumps({"id": f"{split}-{i}", "question": {"stem": f"Why {i}?", "choices": [
                    {"text": f"because {c}", "label": c} for c in labels]},
                                    "answerKey": labels[i % len(labels)]}) + "\n")
    (root / "gsm8k").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with (root / "gsm8k" / f"{split}.jsonl").open("w") as f:
            for i in range(3):
                f.write(json.dumps({"question": f"What is {i} + 1000?", "answer": f"{i} + 1000 = {i + 1000}\n"
                                                                                     f"#### {i + 1000:,}"}) + "\n")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_benchmarks(tmp_path)


def test_mmlu_prompt_is_lm_evals_default_format(root):
    questions = tasks.mmlu(root, shots=1)
    assert [q.subject for q in questions] == ["anatomy"] * 3 + ["high_school_physics"] * 3
    q = questions[1]
    assert q.id == "anatomy/1" and q.answer == 1 and q.choices == (" A", " B", " C", " D")
    assert q.context == ("The following are multiple choice questions (with answers) about anatomy.\n\n"
                         "anatomy dev q0?\nA. red\nB. green, blue\nC. cyan\nD. m\nAnswer: A\n\n"
                         "anatomy test q1?\nA. red\nB. green, blue\nC. cyan\nD. m\nAnswer:")


def test_zero_shot_mmlu_has_no_examples(root):
    assert "dev" not in tasks.mmlu(root, shots=0, subjects=["anatomy"])[0].context


def test_arc_reads_ai2_jsonl_with_number_and_letter_labels(root):
    questions = tasks.arc_challenge(root, shots=2)
    assert [q.answer for q in questions] == [0, 1, 2, 3]
    assert len(questions[0].choices) == 3 and questions[0].choices[0] == " because 1"
    assert questions[0].context == ("Question: Why 0?\nAnswer: because 1\n\nQuestion: Why 1?\nAnswer: because B\n\n"
                                    "Question: Why 0?\nAnswer:")


@pytest.mark.parametrize("text, number", [
    ("so 3 + 4 = 7\n#### 7", "7"), ("#### 1,000.", "1000"), ("#### $12", "12"), ("#### -12", "-12"),
    ("#### 2.5", "2.5"), ("the answer is 7", None), ("#### none", None), ("#### 4\n#### 5", "4"),
])
def test_gsm8k_answer_is_the_number_after_the_marker(text, number):
    assert tasks.gsm8k_answer(text) == number


def test_gsm8k_prompt_has_worked_examples_and_targets(root):
    problems = tasks.gsm8k(root, shots=2)
    assert [p.target for p in problems] == ["1000", "1001", "1002"]
    assert problems[2].context.count("Question:") == 3
    assert problems[2].context.endswith("Question: What is 2 + 1000?\nAnswer:")
    assert "#### 1,001\n\n" in problems[2].context


def test_sample_is_seeded_spread_and_in_order():
    items = list(range(1000))
    first = tasks.sample(items, 50, seed=3)
    assert first == tasks.sample(items, 50, seed=3) == sorted(first)
    assert first != tasks.sample(items, 50, seed=4)
    assert first[-1] > 500, "a sample should reach past the first subjects"
    assert tasks.sample(items[:10], 50, seed=3) == items[:10]
    assert tasks.sample(items, None, seed=3) == items


def test_missing_files_are_named(tmp_path):
    with pytest.raises(tasks.MissingData, match=str(tmp_path / "mmlu")):
        tasks.mmlu(tmp_path, shots=0)


def test_eval_config_resolves_data_root_and_rejects_unknown_keys(tmp_path):
    config = EvalConfig()
    assert config.data_path().is_absolute() and config.data_path().name == "data"
    assert EvalConfig(data_root=str(tmp_path)).data_path() == tmp_path.resolve()
    bad = tmp_path / "bad.yaml"
    bad.write_text("shots:\n  mmlu: 5\n  hellaswag: 10\n")
    with pytest.raises(Exception, match="shots.hellaswag"):
        load_config(EvalConfig, bad)
    bad.write_text("tasks: [mmlu, trivia]\n")
    with pytest.raises(Exception, match="tasks"):
        load_config(EvalConfig, bad)


def test_demo_pipeline_keeps_its_evaluate_fields():
    from solo.config import CONFIG_DIR
    from solo.pipeline import PipelineConfig

    config = load_config(PipelineConfig, CONFIG_DIR / "pipelines" / "demo.yaml")
    assert config.evaluate.max_new_tokens == 40 and config.evaluate.prompts
    assert config.evaluate.max_questions is not None, "the demo must evaluate a sample, not every question"


# ---------------------------------------------------------------- a task asked for without its files


def test_a_subject_without_its_dev_file_is_missing_data(root):
    (root / "mmlu" / "dev" / "anatomy_dev.csv").unlink()
    assert tasks.missing_data("mmlu", root) == root / "mmlu" / "dev" / "anatomy_dev.csv"
    assert tasks.missing_data("arc_challenge", root) is None and tasks.missing_data("gsm8k", root) is None


def test_only_the_defaults_tasks_may_be_left_out(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_CHECKOUT", str(tmp_path / "checkout"))  # no ../shared/data beside it
    assert set(check_task_data(EvalConfig())) == {"mmlu", "arc_challenge"}
    for asked in (EvalConfig(tasks=["mmlu", "arc_challenge"]), EvalConfig(data_root=str(tmp_path)),
                  load_config(EvalConfig, overrides=["tasks=[gsm8k]"])):
        with pytest.raises(SoloError, match=r"evaluate: task \w+ has no data: .* is not there"):
            check_task_data(asked)


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solo: "), captured.err
    assert "wrote" not in captured.out + captured.err  # nothing was written, and nothing says so
    return lines[0]


def test_evaluate_a_model_on_a_task_with_no_data_exits_2_naming_the_path(tmp_path, capsys):
    wrong = tmp_path / "WRONG"
    code = evaluate_job.main(["--model", str(tmp_path / "model"), "--task", "mmlu", "--data", str(wrong),
                              "--output", str(tmp_path / "out")])
    assert code == 2 and f"{wrong / 'mmlu' / 'test'} is not there" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_evaluate_stage_with_no_data_for_its_task_exits_2_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOLO_HOME", str(tmp_path / "home"))
    wrong = tmp_path / "WRONG"
    assert evaluate_job.main(["--run", "mine", "--task", "arc_challenge", "--data", str(wrong)]) == 2
    assert str(wrong / "arc_challenge" / "ARC-Challenge-Test.jsonl") in one_error_line(capsys)
    # The whole pipeline checks it with its inputs, before Ray starts and hours before the stage would run.
    assert pipeline_job.main(["--set", f"evaluate.data_root={wrong}", "--output", str(tmp_path / "run")]) == 2
    assert str(wrong / "mmlu" / "test") in one_error_line(capsys)
    assert not (tmp_path / "run" / "data").exists()
