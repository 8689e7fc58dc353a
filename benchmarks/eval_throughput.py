"""Multiple-choice scoring throughput: questions per second, batched against one at a time.

    python benchmarks/eval_throughput.py [--model PATH] [--questions 64]
Without --model it scores an untrained `demo` Llama (speed does not depend on the weights) with a
BPE tokenizer trained on the embedded corpus. Writes benchmarks/results/eval_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.record import Conditions, ran_on, record
from solo.evals import suite, tasks
from solo.evals.config import EvalConfig


def untrained_demo_model(folder: Path, vocab_size: int = 4096, seq_len: int = 256) -> Path:
    from transformers import LlamaForCausalLM

    from solo.data import corpus
    from solo.tokens.tokenizer import stop_token_ids
    from solo.tokens.train_bpe import train_bpe
    from solo.train.presets import llama_config

    tokenizer = train_bpe((d["text"] for d in corpus.documents(max_documents=500)), vocab_size, min_frequency=2)
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config("demo", len(tokenizer), seq_len, stop_token_ids(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measure(model, tokenizer, questions, batch_size: int) -> dict:
    started = time.perf_counter()
    metrics, _ = suite.score_multiple_choice(model, tokenizer, questions, batch_size)
    seconds = time.perf_counter() - started
    return {"batch_size": batch_size, "seconds": round(seconds, 2),
            "questions_per_s": round(len(questions) / seconds, 2), "accuracy": metrics["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    from solo.evals.model import load_model

    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer = load_model(args.model or untrained_demo_model(Path(scratch)))
    root = EvalConfig().data_path()
    workloads = {"mmlu 5-shot": tasks.mmlu(root, shots=5), "arc_challenge 0-shot": tasks.arc_challenge(root, shots=0)}
    conditions = Conditions()
    rows = []
    for name, questions in workloads.items():
        sample = tasks.sample(questions, args.questions, seed=0)
        one, batched = (measure(model, tokenizer, sample, b) for b in (1, args.batch_size))
        assert one["accuracy"] == batched["accuracy"], "batching must not change the answers"
        rows.append({"task": name, "questions": len(sample), "one_at_a_time": one, "batched": batched,
                     "speedup": round(batched["questions_per_s"] / one["questions_per_s"], 2)})
        print(json.dumps(rows[-1]))
    result = {"benchmark": "eval_throughput", "model": str(args.model or "untrained demo Llama"),
              "parameters": model.num_parameters(), "window": model.config.max_position_embeddings,
              "torch": f"{torch.__version__}, {torch.get_num_threads()} threads", **conditions.end(), "rows": rows}
    lines = ["# Multiple-choice scoring throughput", "", ran_on(result), "",
             f"{result['model']} ({result['parameters']:,} parameters, {result['window']}-token window), torch "
             f"{result['torch']}.", "",
             "| task | questions | one at a time (q/s) | batched (q/s) | batch | speed-up | accuracy (both) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['task']} | {r['questions']} | {r['one_at_a_time']['questions_per_s']} | "
              f"{r['batched']['questions_per_s']} | {r['batched']['batch_size']} | {r['speedup']}× | "
              f"{100 * r['batched']['accuracy']:.1f}% |" for r in rows]
    record("eval_throughput", result, "\n".join(lines))


if __name__ == "__main__":
    main()
