"""The lm-evaluation-harness bridge, and `python -m jobs.evaluate`, on the shared benchmark files."""

import importlib.util
import json

import pytest

from solo.evals import suite, tasks
from solo.evals.config import EvalConfig

ROOT = EvalConfig().data_path()
needs_data = pytest.mark.skipif(not (ROOT / "mmlu" / "test").is_dir(), reason=f"no MMLU files at {ROOT}")
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is not installed (optional extra: pip install -e '.[eval]')")
SUBJECTS = ["abstract_algebra", "anatomy"]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed (optional extra: pip install -e '.[eval]')")
    from solo.evals.harness import SoloLM

    return SoloLM(str(tiny_model_dir), batch_size=8)


@needs_lm_eval
@needs_data
def test_harness_mmlu_agrees_with_ours_question_by_question(lm):
    from solo.evals.harness import mmlu_task, run

    results = run(lm, [mmlu_task(ROOT, s) for s in SUBJECTS], num_fewshot=2, limit=12)
    questions = [q for s in SUBJECTS for q in tasks.mmlu(ROOT, shots=2, subjects=[s])[:12]]
    ours, _ = suite.score_multiple_choice(lm.model, lm.tokenizer, questions, batch_size=8)
    for subject in SUBJECTS:
        assert results[f"solo_mmlu_{subject}"]["acc,none"] == pytest.approx(ours["per_subject"][subject]["accuracy"],
                                                                            abs=1e-6)


@needs_lm_eval
def test_harness_requests_reach_our_scorer(lm):
    from lm_eval.api.instance import Instance

    def request(kind, args):
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    [(logprob, greedy)] = lm.loglikelihood([request("loglikelihood", ("The json module", " encodes"))])
    assert logprob < 0 and isinstance(greedy, bool)
    [rolling] = lm.loglikelihood_rolling([request("loglikelihood_rolling", ("some text " * 50,))])
    assert rolling < logprob * 10
    replies = lm.generate_until([request("generate_until", ("Question: 1 + 1?\nAnswer:", {"until": ["\n\n"],
                                                                                          "max_gen_toks": 6}))] * 2)
    assert len(replies) == 2 and replies[0] == replies[1] and "\n\n" not in replies[0]


@needs_data
def test_evaluate_job_on_a_model_folder(tiny_model_dir, tmp_path, capsys):
    from jobs.evaluate import main

    code = main(["--model", str(tiny_model_dir), "--task", "mmlu", "--task", "arc_challenge", "--data", str(ROOT),
                 "--output", str(tmp_path), "--set", "max_questions=5", "--set", "shots={mmlu: 1}"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"mmlu", "arc_challenge"} and printed["mmlu"]["n"] == 5
    saved = json.loads((tmp_path / "mmlu" / "metrics.json").read_text())
    assert saved["accuracy"] == printed["mmlu"]["accuracy"] and saved["settings"]["shots"] == 1


def test_evaluate_job_rejects_an_unknown_task(capsys):
    from jobs.evaluate import main

    with pytest.raises(SystemExit):
        main(["--task", "trivia"])
    assert "invalid choice" in capsys.readouterr().err
