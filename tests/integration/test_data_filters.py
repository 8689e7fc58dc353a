"""The cleaning step on a real local Ray: boilerplate lines counted across documents and removed,
language and quality rules, the quality classifier trained from examples, the PII scrub, and the
streamed report's counts and examples."""

import json
import random

import pyarrow.parquet as pq
import pytest

from solo.config import REPO_ROOT
from solo.data import classifier as quality_classifier
from solo.data import stage as data
from solo.data.config import (
    BoilerplateConfig,
    DataConfig,
    DedupConfig,
    FilterConfig,
    InputSpec,
    QualityClassifierConfig,
)
from solo.data.report import EXAMPLES_PER_RULE

pytestmark = pytest.mark.integration

TOPICS = ["river", "mountain", "forest", "harbour", "village", "castle", "garden", "library", "bridge", "market",
          "island", "valley"]


def page(topic: str) -> str:
    return "\n".join([
        "Jump to navigation",
        f"The {topic} has a long history, and it has been described by many of the people who have lived near it.",
        f"Visitors come to the {topic} in the summer to walk, to read and to talk with the families who stay there.",
        f"In the old records the {topic} appears with its first name, and the maps show how it changed with time.",
        f"Today the {topic} is cared for by a small group that meets every month to plan the work of the season.",
        f"They keep notes of what they see, and they share them with the school and with the museum in {topic}town.",
        "Share this page",
    ])


def spam(rng: random.Random) -> str:
    """Sentence-shaped advertising (tests/unit/test_quality_classifier.py has the longer story)."""
    products = ["replica watches", "diet pills", "casino bonuses", "detox teas", "payday loans", "vpn accounts"]
    claims = ["at the lowest price on the web", "with free shipping to your door", "and save up to 50% today",
              "with a money back guarantee", "and get a bonus gift with every order", "that the experts love"]
    return " ".join(f"{rng.choice(['Buy', 'Order', 'Get'])} {rng.choice(products)} {rng.choice(claims)}!"
                    for _ in range(rng.randint(10, 16)))


# Passes every rule (stop words, sentences, no repeated n-grams), not the classifier.
SPAM_PAGE = ("Buy replica watches at the lowest price on the web! Order diet pills with free shipping to your door. "
             "Get casino bonuses and save up to 50% today! Grab detox teas with a money back guarantee. Shop for "
             "payday loans that the experts love! Find vpn accounts and get a bonus gift with every order. Try "
             "crypto signals before this offer of the week ends! Join thousands of happy customers now.")


def classifier_examples(folder) -> QualityClassifierConfig:
    """Real C4 pages to keep, generated spam to drop."""
    c4 = (REPO_ROOT.parent / "shared" / "data" / "webtext" / "c4_en_train_first1000.jsonl").read_text().splitlines()
    (folder / "good.jsonl").write_text("\n".join(c4[:150]) + "\n")
    rng = random.Random(0)
    (folder / "spam.jsonl").write_text("".join(json.dumps({"text": spam(rng)}) + "\n" for _ in range(150)))
    return QualityClassifierConfig(positives=str(folder / "good.jsonl"), negatives=str(folder / "spam.jsonl"))


def test_boilerplate_language_quality_and_pii_end_to_end(ray_local, tmp_path):
    rows = [{"id": f"web-{t}", "text": page(t)} for t in TOPICS]
    rows[0]["text"] += "\nWrite to the group at friends@example.org or call (555) 123-4567 for a visit."
    rows.append({"id": "web-german", "text": (
        "Die Geschichte des Flusstals ist lang, und sie wurde schon oft von den Menschen erzählt, die dort leben. "
        "Bauern kamen mit ihren Tieren in das Tal und bauten die ersten Häuser aus Stein und Holz. " * 3)})
    rows.append({"id": "web-menu", "text": "\n".join(["Click here to read more about all of the products and the "
                                                       "services that we have for you today."] * 20)})
    rows.append({"id": "web-spam", "text": SPAM_PAGE})
    source = tmp_path / "web.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(inputs=[InputSpec(path=str(source), domain="web")], dedup=DedupConfig(near=False),
                        filters=FilterConfig(boilerplate=BoilerplateConfig(min_documents=10),
                                             classifier=classifier_examples(tmp_path)))

    data.prepare(config, tmp_path / "out")

    kept = {r["id"]: r["text"] for r in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    dropped = {r["id"]: r["reason"] for r in pq.read_table(tmp_path / "out" / "dropped").to_pylist()}
    assert set(kept) == {f"web-{t}" for t in TOPICS}
    assert not any("Jump to navigation" in t or "Share this page" in t for t in kept.values())
    assert "<EMAIL>" in kept["web-river"] and "<PHONE>" in kept["web-river"]
    assert "friends@example.org" not in kept["web-river"]
    assert dropped["web-german"] == "lang:de"
    assert dropped["web-menu"] == "gopher_repetition:dup_line_frac"
    assert dropped["web-spam"] == "quality_classifier"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cleaning"] == {"boilerplate_lines": 2 * len(TOPICS), "pii_email": 1, "pii_ip": 0, "pii_phone": 1}
    assert report["dropped_by_reason"]["lang:de"] == 1 and report["read"] == len(rows)
    assert all(len(shown) <= EXAMPLES_PER_RULE for shown in report["examples"].values())
    assert "Boilerplate lines removed: 24" in (tmp_path / "out" / "report.md").read_text()
    assert report["dropped_by_reason"]["quality_classifier"] == 1
    assert report["quality_classifier"]["held_out_accuracy"] == 1.0 and report["quality_classifier"]["held_out"] == 30
    assert (tmp_path / "out" / quality_classifier.MODEL_FILE).is_file()
    assert "Quality classifier: trained on 270" in (tmp_path / "out" / "report.md").read_text()
