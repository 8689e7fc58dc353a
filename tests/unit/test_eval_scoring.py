"""Scoring by log-likelihood and by generation, on a model whose answers are known and on the tiny real one."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from solo.errors import SoloError
from solo.evals import suite, tasks
from solo.evals.config import EvalConfig
from solo.evals.generate import cpu_engine, greedy
from solo.evals.likelihood import encode_pair, loglikelihoods, text_loglikelihood
from solo.serving.engine import Delta, Engine
from solo.tokens.tokenizer import stop_token_ids

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_tasks import write_benchmarks  # noqa: E402  (the same small benchmark tree)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from solo.evals.model import load_model

    return load_model(tiny_model_dir)


class FavouriteToken(torch.nn.Module):
    """A fake causal LM that puts log-probability ~0 on one token at every position and spreads the
    rest evenly: it 'answers' whatever continuation is that token, so its accuracy is known."""

    def __init__(self, vocab: int, favourite: int, window: int = 256):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=window)
        self.vocab, self.favourite = vocab, favourite
        self.calls: list[tuple[int, int]] = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(tuple(input_ids.shape))
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favourite] = 20.0
        return SimpleNamespace(logits=logits)


def test_scorer_picks_the_continuation_the_model_prefers(tiny, tmp_path):
    _, tokenizer = tiny
    questions = tasks.mmlu(write_benchmarks(tmp_path), shots=1)
    head, tail = encode_pair(tokenizer, questions[0].context, " C")
    assert len(tail) == 1, "each MMLU letter should be one token, so one pass scores all four"
    model = FavouriteToken(len(tokenizer), favourite=tail[0])
    metrics, samples = suite.score_multiple_choice(model, tokenizer, questions, batch_size=4)
    assert {s["chosen"] for s in samples} == {2}
    expected = sum(q.answer == 2 for q in questions) / len(questions)
    assert metrics["accuracy"] == pytest.approx(expected) and metrics["n"] == 6
    assert metrics["per_subject"]["anatomy"] == {"accuracy": pytest.approx(1 / 3),
                                                  "accuracy_norm": pytest.approx(1 / 3), "n": 3}
    # Four letters share one input: 6 questions are 6 sequences, in batches of at most 4.
    assert sum(rows for rows, _ in model.calls) == 6 and max(rows for rows, _ in model.calls) == 4


def test_loglikelihood_is_the_sum_over_continuation_tokens(tiny):
    model, tokenizer = tiny
    context, continuation = "The json module", " encodes objects as text"
    head, tail = encode_pair(tokenizer, context, continuation)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([head + tail])[:, :-1]).logits.log_softmax(-1)[0]
    by_hand = sum(logits[len(head) - 1 + i, token].item() for i, token in enumerate(tail))
    [scored] = loglikelihoods(model, tokenizer, [(context, continuation)], batch_size=1)
    assert scored.logprob == pytest.approx(by_hand, abs=1e-4)
    assert scored.logprob < 0


def test_trailing_space_of_the_context_moves_to_the_continuation(tiny):
    _, tokenizer = tiny
    assert encode_pair(tokenizer, "Answer: ", "yes") == encode_pair(tokenizer, "Answer:", " yes")


def test_batched_scores_equal_one_at_a_time(tiny, tmp_path):
    model, tokenizer = tiny
    requests = [(q.context, c) for q in tasks.arc_challenge(write_benchmarks(tmp_path), shots=1) for c in q.choices]
    requests.append(("x " * 400, " overflow"))  # longer than the window: cut from the left
    one = loglikelihoods(model, tokenizer, requests, batch_size=1)
    batched = loglikelihoods(model, tokenizer, requests, batch_size=8)
    assert [s.logprob for s in batched] == pytest.approx([s.logprob for s in one], abs=1e-4)
    assert [s.is_greedy for s in batched] == [s.is_greedy for s in one]


def test_rolling_loglikelihood_matches_bits_per_byte(tiny):
    from solo.evals.bpb import bits_per_byte

    model, tokenizer = tiny
    text = "Return a JSON string for the object. " * 40   # several windows
    scores = bits_per_byte(model, tokenizer, [text], seq_len=256)
    expected = -scores["bits_per_byte"] * len(text.encode()) * math.log(2)
    assert text_loglikelihood(model, tokenizer, text) == pytest.approx(expected, rel=1e-4)


def test_generation_through_the_engine_equals_hf_generate_alone(tiny):
    """All prompts in flight at once in the serving engine give what `generate` gives each alone,
    cut at the first stop string."""
    model, tokenizer = tiny
    prompts = ["Question: What is 2 + 2?\nAnswer:", "def", "The json module encodes objects as text, and"]
    replies = greedy(cpu_engine(model, batch_size=3), tokenizer, prompts, max_new_tokens=10)
    for prompt, reply in zip(prompts, replies):
        ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=stop_token_ids(tokenizer),
                             pad_token_id=tokenizer.pad_token_id)
        assert reply == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert any(replies), "an untrained model still says something"
    stop = replies[2][3:6]
    [cut] = greedy(cpu_engine(model, batch_size=1), tokenizer, prompts[2:], max_new_tokens=10, stop=[stop])
    assert cut == replies[2][:replies[2].index(stop)]


class Scripted(Engine):
    """An engine that answers every prompt with the same text, a token at a time."""

    def __init__(self, tokenizer, reply: str):
        self.max_context, self.reply_ids, self.prompts = \
            512, tokenizer(reply, add_special_tokens=False)["input_ids"], []

    async def generate(self, prompt_ids, params):
        self.prompts.append(prompt_ids)
        for i, token in enumerate(self.reply_ids):
            yield Delta([token], "length" if i == len(self.reply_ids) - 1 else None)


def test_gsm8k_is_scored_from_what_the_engine_generates(tiny, tmp_path):
    _, tokenizer = tiny
    problems = tasks.gsm8k(write_benchmarks(tmp_path), shots=1)
    engine = Scripted(tokenizer, " 1 + 1000 = 1001\n#### 1,001\n\nQuestion: next")
    metrics, samples = suite.score_gsm8k(engine, tokenizer, problems, max_new_tokens=64)
    assert len(engine.prompts) == len(problems), "every problem goes through the engine"
    assert all(s["reply"] == " 1 + 1000 = 1001\n#### 1,001" for s in samples), "cut at the stop string"
    expected = sum(p.target == "1001" for p in problems) / len(problems)
    assert metrics == {"accuracy": pytest.approx(expected), "n": len(problems)}
    assert 0 < expected < 1, "the fixture should hold problems with and without 1001 as the answer"


def test_metrics_are_deterministic_per_task(tiny, tmp_path):
    model, tokenizer = tiny
    config = EvalConfig(tasks=["mmlu", "arc_challenge", "gsm8k"], data_root=str(write_benchmarks(tmp_path / "data")),
                        shots={"mmlu": 1, "arc_challenge": 1, "gsm8k": 2}, max_questions=4, batch_size=3,
                        gsm8k_max_new_tokens=8)
    first = suite.run_tasks(model, tokenizer, config, tmp_path / "a")
    second = suite.run_tasks(model, tokenizer, config, tmp_path / "b")
    assert first == second
    for name in config.tasks:
        assert (tmp_path / "a" / name / "metrics.json").read_bytes() == \
            (tmp_path / "b" / name / "metrics.json").read_bytes()
        metrics = json.loads((tmp_path / "a" / name / "metrics.json").read_text())
        assert 0 <= metrics["accuracy"] <= 1 and metrics["n"] == (3 if name == "gsm8k" else 4)
        assert metrics["settings"]["seed"] == 0 and metrics["settings"]["max_questions"] == 4
    assert first["mmlu"]["settings"]["shots"] == 1
    assert len((tmp_path / "a" / "gsm8k" / "samples.jsonl").read_text().splitlines()) == 3


def test_a_task_asked_for_without_its_files_is_an_error_naming_the_path(tiny, tmp_path):
    model, tokenizer = tiny
    said = []
    with pytest.raises(SoloError, match=f"task mmlu has no data: {tmp_path / 'mmlu' / 'test'} is not there"):
        suite.run_tasks(model, tokenizer, EvalConfig(tasks=["mmlu"], data_root=str(tmp_path)), tmp_path / "out",
                        said.append)
    assert said == [] and not (tmp_path / "out").exists()


def test_a_default_task_without_its_files_is_left_out_and_said_so(tiny, tmp_path, monkeypatch):
    """The defaults read ../shared/data beside the checkout: a machine without it still evaluates bits per byte."""
    monkeypatch.setenv("SOLO_CHECKOUT", str(tmp_path / "checkout"))
    model, tokenizer = tiny
    said = []
    results = suite.run_tasks(model, tokenizer, EvalConfig(), tmp_path / "out", said.append)
    assert results == {} and not (tmp_path / "out").exists()
    assert said == [f"evaluate: {name} not run: no benchmark data at {path} (the default data_root; set it to "
                    f"score {name})" for name, path in (("mmlu", tmp_path / "shared/data/mmlu/test"),
                                                        ("arc_challenge", tmp_path / "shared/data/arc_challenge/"
                                                                                     "ARC-Challenge-Test.jsonl"))]
