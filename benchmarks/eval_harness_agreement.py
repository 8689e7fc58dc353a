"""Does solo's MMLU scorer agree with lm-evaluation-harness's? Both score the same model on the same
local questions: the harness through its own task config (prompt, few-shot sampler, metric), solo
through solo.evals. The issue's bar: within 0.5 accuracy points.

    pip install -e '.[eval]'
    python benchmarks/eval_harness_agreement.py [--model PATH] [--subjects 6] [--limit 40] [--shots 5]
Writes benchmarks/results/eval_harness_agreement.{json,md}; without lm-eval it records that instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

from benchmarks.record import record
from solo.evals import suite, tasks
from solo.evals.config import EvalConfig


def write(result: dict, lines: list[str]) -> None:
    record("eval_harness_agreement", result, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--subjects", type=int, default=6, help="the first N MMLU subjects")
    parser.add_argument("--limit", type=int, default=40,
                        help="questions per subject (the first N, as lm-eval's --limit)")
    parser.add_argument("--shots", type=int, default=5)
    args = parser.parse_args()
    if importlib.util.find_spec("lm_eval") is None:
        write({"benchmark": "eval_harness_agreement", "skipped": "lm-eval is not installed"},
              ["# solo vs lm-evaluation-harness on MMLU", "",
               "Not run: lm-eval is not installed (`pip install -e '.[eval]'`)."])
        return
    from importlib.metadata import version

    from eval_throughput import untrained_demo_model

    from solo.evals.harness import SoloLM, mmlu_task, run

    root = EvalConfig().data_path()
    subjects = tasks.mmlu_subjects(root)[:args.subjects]
    with tempfile.TemporaryDirectory() as scratch:
        lm = SoloLM(str(args.model or untrained_demo_model(Path(scratch))), batch_size=16)
    started = time.perf_counter()
    harness = run(lm, [mmlu_task(root, s) for s in subjects], num_fewshot=args.shots, limit=args.limit)
    harness_s = time.perf_counter() - started
    started = time.perf_counter()
    questions = [q for s in subjects for q in tasks.mmlu(root, args.shots, [s])[:args.limit]]
    ours, _ = suite.score_multiple_choice(lm.model, lm.tokenizer, questions, batch_size=16)
    ours_s = time.perf_counter() - started
    rows = [{"subject": s, "n": ours["per_subject"][s]["n"], "solo": 100 * ours["per_subject"][s]["accuracy"],
             "lm_eval": 100 * harness[f"solo_mmlu_{s}"]["acc,none"]} for s in subjects]
    # Overall as the mean over questions for both (the harness's group average weights by size too).
    overall_solo = 100 * ours["accuracy"]
    overall_harness = sum(r["lm_eval"] * r["n"] for r in rows) / sum(r["n"] for r in rows)
    gap = abs(overall_solo - overall_harness)
    result = {"benchmark": "eval_harness_agreement", "lm_eval": version("lm-eval"),
              "model": str(args.model or "untrained demo Llama"), "shots": args.shots, "questions": len(questions),
              "solo_accuracy": round(overall_solo, 3), "lm_eval_accuracy": round(overall_harness, 3),
              "gap_points": round(gap, 3), "within_half_a_point": gap <= 0.5, "solo_s": round(ours_s, 1),
              "lm_eval_s": round(harness_s, 1), "subjects": rows}
    print(json.dumps({k: v for k, v in result.items() if k != "subjects"}))
    lines = ["# solo vs lm-evaluation-harness on MMLU", "",
             f"lm-eval {result['lm_eval']}, {result['model']}, {args.shots}-shot, the first {args.limit} test "
             f"questions of {len(subjects)} subjects ({len(questions)} in all), from the local CSVs.", "",
             f"**Overall: solo {overall_solo:.2f}%, lm-eval {overall_harness:.2f}%, gap {gap:.2f} points** "
             f"(bar: 0.5). Time: solo {ours_s:.1f} s, lm-eval {harness_s:.1f} s.", "",
             "| subject | questions | solo % | lm-eval % |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['subject']} | {r['n']} | {r['solo']:.1f} | {r['lm_eval']:.1f} |" for r in rows]
    write(result, lines)


if __name__ == "__main__":
    main()
