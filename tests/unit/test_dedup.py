"""Near-dedup, decontamination and mixing on real text, without Ray.

The same code on a real Ray, with resume after a kill: tests/integration/test_data_resume.py."""

import json
import random

import numpy as np

from solo.config import REPO_ROOT
from solo.data.config import DecontamConfig, DedupConfig, EvalSetSpec, MixingConfig
from solo.data.decontam import build_index, mark_contaminated
from solo.data.mixing import apply, draw, plan
from solo.data.neardedup import (
    jaccard,
    near_duplicates_in_memory,
    shared_words,
    shingle_sequence,
    shingles,
    similarity,
    verify,
)

DATA = REPO_ROOT.parent / "shared" / "data"


def c4_documents(count: int, min_words: int = 150) -> list[str]:
    docs = []
    with (DATA / "webtext" / "c4_en_train_first1000.jsonl").open() as f:
        for line in f:
            text = json.loads(line)["text"]
            if len(text.split()) >= min_words:
                docs.append(text)
            if len(docs) == count:
                return docs
    raise AssertionError("not enough C4 documents")


def edited(text: str, rng: random.Random) -> str:
    """A near copy: a sentence-sized span deleted, a few words swapped, a short line inserted."""
    words = text.split()
    start = rng.randrange(len(words) // 2)
    words = words[:start] + words[start + len(words) // 25:]
    for _ in range(2):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    words.insert(rng.randrange(len(words)), "Updated on Monday by the editors.")
    return " ".join(words)


def span_edited(text: str, rng: random.Random, rate: float) -> str:
    """`rate` of the words replaced by other words, in spans of 3-6 (a few phrases rewritten)."""
    words = text.split()
    budget = round(rate * len(words))
    while budget > 0:
        span = min(budget, rng.randint(3, 6))
        at = rng.randrange(len(words) - span)
        words[at:at + span] = [f"edit{rng.randrange(10**6)}" for _ in range(span)]
        budget -= span
    return " ".join(words)


def test_near_duplicates_found_and_survivor_is_the_smallest_id_whatever_the_order():
    rng = random.Random(0)
    originals = c4_documents(12, min_words=400)
    docs = [(f"b-{i:02d}", text) for i, text in enumerate(originals)]
    docs += [(f"a-{i:02d}", edited(originals[i], rng)) for i in range(4)]   # copies with the smaller ids
    docs += [(f"c-{i:02d}", edited(originals[i], rng)) for i in range(4)]
    found = near_duplicates_in_memory(docs, DedupConfig())
    expected = {f"b-{i:02d}": f"a-{i:02d}" for i in range(4)} | {f"c-{i:02d}": f"a-{i:02d}" for i in range(4)}
    assert found.duplicate_of == expected
    rng.shuffle(docs)
    assert near_duplicates_in_memory(docs, DedupConfig()).duplicate_of == expected


def test_templated_pages_collide_in_lsh_but_are_not_merged():
    template = c4_documents(2, min_words=400)
    header, footer = " ".join(template[0].split()[:250]), " ".join(template[1].split()[:250])
    bodies = [" ".join(body.split()[:120]) for body in c4_documents(40)[-10:]]
    pages = [(f"page-{i}", f"{header}\n{body}\n{footer}") for i, body in enumerate(bodies)]
    similarities = [jaccard(shingles(pages[0][1], 5), shingles(page, 5)) for _, page in pages[1:]]
    assert 0.55 < min(similarities) and max(similarities) < 0.75  # alike, but below the threshold
    found = near_duplicates_in_memory(pages, DedupConfig())
    assert found.candidate_pairs > 0  # LSH alone would have merged these
    assert found.duplicate_of == {}
    shared = [shared_words(shingle_sequence(pages[0][1], 5), shingle_sequence(page, 5), 5) for _, page in pages[1:]]
    assert max(shared) < DedupConfig().similarity_threshold()
    assert near_duplicates_in_memory(pages, DedupConfig(similarity="jaccard")).duplicate_of == {}


def test_shared_words_forgives_edited_spans_that_jaccard_punishes():
    rng = random.Random(3)
    original = c4_documents(1, min_words=400)[0]
    copy = span_edited(original, rng, 0.12)
    a, b = shingle_sequence(original, 5), shingle_sequence(copy, 5)
    assert jaccard(np.unique(a), np.unique(b)) < 0.7  # each 3-6 word span breaks 7-10 shingles
    assert 0.86 < shared_words(a, b, 5) < 0.9        # but only its own words
    assert shared_words(a, a, 5) == 1.0
    assert shared_words(a, shingle_sequence(c4_documents(2, min_words=400)[1], 5), 5) < 0.05
    assert near_duplicates_in_memory([("x", original), ("y", copy)], DedupConfig()).duplicate_of == {"y": "x"}
    assert near_duplicates_in_memory([("x", original), ("y", copy)],
                                     DedupConfig(similarity="jaccard")).duplicate_of == {}


def test_half_band_probes_propose_pairs_that_whole_bands_miss():
    rng = random.Random(5)
    originals = c4_documents(12, min_words=300)
    docs = [(f"o{i:02d}", t) for i, t in enumerate(originals)] + \
           [(f"p{i:02d}", span_edited(t, rng, 0.09)) for i, t in enumerate(originals)]
    expected = {f"p{i:02d}": f"o{i:02d}" for i in range(12)}
    probed = near_duplicates_in_memory(docs, DedupConfig())
    assert probed.duplicate_of == expected
    whole_bands = near_duplicates_in_memory(docs, DedupConfig(probe_half_bands=False))
    assert whole_bands.candidate_pairs < probed.candidate_pairs
    assert set(whole_bands.duplicate_of.items()) < set(expected.items())  # some found, not all


def test_decontamination_drops_a_page_quoting_a_gsm8k_question():
    question = json.loads((DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[7])["question"]
    index = build_index(DecontamConfig(sets=[EvalSetSpec(kind="gsm8k", path="../shared/data/gsm8k/test.jsonl")]))
    others = c4_documents(3)
    batch = {"id": ["q", "a", "b", "c"], "text": [f"Homework help!\n\n{question.upper()}\n\nAnswer below.", *others],
             "reason": ["", "", "", ""]}
    assert mark_contaminated(batch, index)["reason"] == ["decontam:gsm8k", "", "", ""]
    short_overlap = " ".join(question.split()[:8])  # fewer words than an n-gram: not evidence
    assert index.contaminated_by(f"{short_overlap} and then something else entirely.") is None


def test_mixing_meets_the_weights_exactly_and_is_deterministic():
    ids = {"web": [f"w{i}" for i in range(600)], "wiki": [f"k{i}" for i in range(100)],
           "code": [f"c{i}" for i in range(50)]}
    config = MixingConfig(weights={"web": 0.5, "wiki": 0.3, "code": 0.2}, total_documents=1000, seed=7)
    mix = plan({d: [draw(7, i) for i in v] for d, v in ids.items()}, config)
    rows = [(d, i) for d, v in ids.items() for i in v] + [("other", "o1"), ("web", "gone")]
    batch = {"id": [i for _, i in rows], "domain": [d for d, _ in rows], "text": ["t"] * len(rows),
             "reason": [""] * (len(rows) - 1) + ["too_short"]}  # a row dropped earlier passes through once
    out = apply(batch, mix)
    assert [r for i, r in zip(out["id"], out["reason"]) if i == "gone"] == ["too_short"]
    kept = [d for d, r in zip(out["domain"], out["reason"]) if not r]
    assert {d: kept.count(d) for d in ("web", "wiki", "code", "other")} == {"web": 500, "wiki": 300, "code": 200,
                                                                           "other": 1}
    assert out["reason"].count("mix_downsample") == 100  # web: 600 → 500
    backwards = {k: v[::-1] for k, v in batch.items()}
    again = apply(backwards, plan({d: [draw(7, i) for i in reversed(v)] for d, v in ids.items()}, config))
    assert sorted(zip(again["id"], again["reason"])) == sorted(zip(out["id"], out["reason"]))
    other_seed = plan({d: [draw(8, i) for i in v] for d, v in ids.items()}, config.model_copy(update={"seed": 8}))
    assert sorted(zip(apply(batch, other_seed)["id"], apply(batch, other_seed)["reason"])) != \
        sorted(zip(out["id"], out["reason"]))


def test_verification_holds_only_a_chunk_of_shingle_sets_at_once():
    rng = random.Random(1)
    originals = c4_documents(6, min_words=400)
    docs = sorted([(f"o{i}", t) for i, t in enumerate(originals)] +
                  [(f"e{i}", edited(t, rng)) for i, t in enumerate(originals)])
    sets = [shingle_sequence(t, 5) for _, t in docs]
    pairs = np.array([(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))])
    sizes = np.array([s.size for s in sets])
    loaded = []

    def load(rows):
        loaded.append(8 * sum(sizes[r] for r in rows))
        return {r: sets[r] for r in rows}

    budget = 8 * int(sizes.max()) * 3
    measure = similarity(DedupConfig())
    kept = verify(pairs, sizes, 0.85, budget, load, measure)
    assert len(loaded) > 1 and max(loaded) <= budget + 2 * 8 * sizes.max()  # one pair over the budget at most
    assert sorted(map(tuple, kept)) == sorted(map(tuple, verify(pairs, sizes, 0.85, 1 << 30, load, measure)))
    assert len(kept) == 6
