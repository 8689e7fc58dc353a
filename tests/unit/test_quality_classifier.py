"""The optional quality classifier: trained from examples the user gives (real web pages against
generated spam), it keeps good pages it never saw and drops spam; deterministic, saved and reused.

The same model inside the data stage on a real Ray: tests/integration/test_data_filters.py."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from solo.data import classifier as quality_classifier
from solo.data.clean import clean
from solo.data.config import DataConfig, FilterConfig, QualityClassifierConfig
from solo.errors import SoloError

WEBTEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "webtext"

PRODUCTS = ["replica watches", "diet pills", "casino bonuses", "detox teas", "crypto signals", "payday loans",
            "designer handbags", "instagram followers", "essay services", "car insurance quotes", "bitcoin bots",
            "knockoff sneakers", "vpn accounts", "slot machines", "cheap flights"]
OPENERS = ["Buy", "Order", "Get", "Grab", "Shop for", "Find", "Try"]
CLAIMS = ["at the lowest price on the web", "with free shipping to your door", "and save up to {n}% today",
          "with a money back guarantee", "from the number one seller of the year", "that the experts love",
          "and get a bonus gift with every order", "to change your life in {n} days", "with no prescription needed",
          "before this offer of the week ends", "and join {n},000 happy customers"]


def spam(rng: random.Random) -> str:
    """A page of sentence-shaped advertising: stop words, punctuation, paragraphs, and nothing else."""
    sentences = [f"{rng.choice(OPENERS)} {rng.choice(PRODUCTS)} {rng.choice(CLAIMS).format(n=rng.randint(10, 90))}"
                 + rng.choice([".", "!", "!!"]) for _ in range(rng.randint(10, 20))]
    half = len(sentences) // 2
    return " ".join(sentences[:half]) + "\n\n" + " ".join(sentences[half:])


def c4_pages(count: int) -> list[str]:
    lines = (WEBTEXT / "c4_en_train_first1000.jsonl").read_text().splitlines()[:count]
    return [json.loads(line)["text"] for line in lines]


def fineweb_pages(count: int) -> list[str]:
    return [row["text"] for row in json.loads((WEBTEXT / "fineweb_first300.json").read_text())[:count]]


@pytest.fixture
def examples(tmp_path) -> QualityClassifierConfig:
    """Positives: 150 C4 pages in a jsonl; negatives: 150 spam pages, one text file each, in a folder."""
    positives = tmp_path / "good.jsonl"
    positives.write_text("".join(json.dumps({"text": t}) + "\n" for t in c4_pages(150)))
    negatives = tmp_path / "spam"
    negatives.mkdir()
    rng = random.Random(0)
    for i in range(150):
        (negatives / f"{i:03d}.txt").write_text(spam(rng))
    return QualityClassifierConfig(positives=str(positives), negatives=str(negatives))


def test_trained_on_examples_it_keeps_unseen_good_pages_and_drops_spam(examples):
    model, stats = quality_classifier.train(examples)
    assert (stats["positives"], stats["negatives"], stats["held_out"], stats["trained_on"]) == (150, 150, 30, 270)
    assert stats["held_out_accuracy"] == 1.0
    other_source = [model.score(t) for t in fineweb_pages(100)]  # FineWeb: never seen, another crawl
    assert np.mean(np.array(other_source) >= examples.threshold) >= 0.95
    fresh_spam = [model.score(spam(random.Random(seed))) for seed in range(100, 150)]
    assert max(fresh_spam) < examples.threshold
    again, _ = quality_classifier.train(examples)
    assert np.array_equal(again.weights, model.weights) and again.bias == model.bias  # deterministic


def test_the_stage_drops_low_scores_with_their_reason(examples):
    model, _ = quality_classifier.train(examples)
    good = fineweb_pages(3)
    batch = {"id": ["a", "b", "c", "d"], "text": [*good, spam(random.Random(7))], "reason": [""] * 4,
             "domain": ["web"] * 4, "duplicate_of": [""] * 4}
    rules_off = {name: {"enabled": False} for name in ("language", "gopher_repetition", "gopher_quality", "c4",
                                                       "fineweb", "boilerplate", "pii")}
    config = DataConfig(min_chars=0, filters=FilterConfig(classifier=examples, **rules_off))
    assert clean(batch, config, classifier=model)["reason"] == ["", "", "", "quality_classifier"]
    assert clean(batch, config)["reason"] == [""] * 4  # no model given: nothing scored


def test_saved_beside_the_output_and_reused_while_its_examples_are_unchanged(examples, tmp_path):
    output = tmp_path / "out"
    messages = []
    model, stats = quality_classifier.prepare(examples, output, messages.append)
    assert (output / quality_classifier.MODEL_FILE).is_file() and "trained" in messages[-1]
    reused, reused_stats = quality_classifier.prepare(examples, output, messages.append)
    assert "reusing" in messages[-1] and reused_stats == stats
    assert np.array_equal(reused.weights, model.weights)
    page = fineweb_pages(1)[0]
    assert reused.score(page) == model.score(page)
    with Path(examples.positives).open("a") as f:  # new examples: trained again
        f.write(json.dumps({"text": fineweb_pages(1)[0]}) + "\n")
    _, retrained = quality_classifier.prepare(examples, output, messages.append)
    assert "trained" in messages[-1] and retrained["positives"] == 151


def test_missing_or_empty_examples_are_a_clear_error(examples, tmp_path):
    with pytest.raises(SoloError, match="does not exist"):
        quality_classifier.train(examples.model_copy(update={"negatives": str(tmp_path / "nowhere.jsonl")}))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"body": "no text field here"}) + "\n")
    with pytest.raises(SoloError, match="no examples in"):
        quality_classifier.train(examples.model_copy(update={"positives": str(empty)}))
