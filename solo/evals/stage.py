"""The evaluate stage: bits per byte of the pretrained and the fine-tuned model on held-out text, the
benchmarks and sample answers on the fine-tuned one (the model the run ships); `metrics.json` and
`report.md` in its folder, each task's details in `<task>/`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from solo.errors import SoloError
from solo.evals.bpb import bits_per_byte
from solo.evals.config import EvalConfig
from solo.evals.generate import chat_answers
from solo.evals.model import load_model
from solo.evals.suite import run_tasks
from solo.faults import fault_point
from solo.store import write_json_atomic


def evaluate(models: dict[str, Path], held_out: list[str], config: EvalConfig, seq_len: int, output: Path,
             log: Callable[[str], None] = print) -> dict:
    """`models`: name → Hugging Face folder, in order; the last one also runs the benchmarks and answers the
    prompts. `held_out`: documents no model trained on. Returns the metrics it wrote to metrics.json."""
    if not held_out:
        raise SoloError("no held-out documents to evaluate on: raise tokenize.val_fraction or add data")
    output.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"held_out_documents": len(held_out)}
    report = ["# Evaluation", "", f"Bits per byte on {len(held_out)} held-out documents.", "",
              "| model | bits per byte | perplexity |", "| --- | ---: | ---: |"]
    for name, folder in models.items():
        model, tokenizer = load_model(folder)
        # Each result is committed to the stage's folder as it comes: a killed stage, run again on the same
        # models and settings (the same folder), takes them from there instead of scoring again.
        done = output / f"bpb-{name}.json"
        if done.is_file():
            scores = json.loads(done.read_text())
        else:
            scores = bits_per_byte(model, tokenizer, held_out, seq_len=seq_len)
            write_json_atomic(done, scores)
            fault_point("evaluate.bpb")
        metrics[f"{name}_bits_per_byte"] = round(scores["bits_per_byte"], 4)
        metrics[f"{name}_perplexity"] = round(scores["perplexity"], 2)
        report.append(f"| {name} | {scores['bits_per_byte']:.4f} | {scores['perplexity']:.2f} |")
    tasks = run_tasks(model, tokenizer, config, output, log, resume=True)
    if tasks:
        report += ["", "## Benchmarks (fine-tuned model)", "", "| task | shots | questions | accuracy |",
                   "| --- | ---: | ---: | ---: |"]
    for name, result in tasks.items():
        metrics[f"{name}_accuracy"] = result["accuracy"]
        report.append(f"| {name} | {result['settings']['shots']} | {result['n']} | {100 * result['accuracy']:.1f} |")
    report += ["", "## Sample answers (fine-tuned model, greedy)", ""]
    samples = []
    for prompt, reply in zip(config.prompts, chat_answers(model, tokenizer, list(config.prompts),
                                                          config.max_new_tokens)):
        samples.append({"prompt": prompt, "answer": reply})
        report += [f"**{prompt}**", "", f"> {reply}", ""]
    (output / "metrics.json").write_text(json.dumps({**metrics, "samples": samples}, indent=2) + "\n")
    (output / "report.md").write_text("\n".join(report) + "\n")
    log("evaluate: bits per byte " + ", ".join(f"{metrics[f'{name}_bits_per_byte']} {name}" for name in models))
    return metrics
