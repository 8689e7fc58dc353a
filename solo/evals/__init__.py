"""Benchmarks from local files: multiple choice by log-likelihood (MMLU, ARC) and generation (GSM8K).

    tasks.py       the files read into prompts, in lm-evaluation-harness's formats
    likelihood.py  batched log-likelihood of continuations, and whole texts
    generate.py    batched greedy generation
    suite.py       a task run end to end: metrics.json per task, deterministic
    harness.py     our model as an lm-eval `LM`, for any of its tasks (optional extra `eval`)
"""
