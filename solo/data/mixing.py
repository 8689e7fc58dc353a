"""Domain mixing: weights over the kept documents, up-sampled by repetition, down-sampled by a seeded draw.

Each document of a mixed domain gets a number in [0, 1) from a hash of (seed, id): the same
document gets the same number in every run and on every worker, whatever the row order. A domain
with factor f = target / kept gives each document floor(f) copies, plus one more to the documents
with the smallest numbers until the target is met exactly; a factor below 1 keeps only those. The
copies keep their id, so the tokenizer's train/validation split (by id) keeps them together.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from solo.data.config import MixingConfig


def draw(seed: int, id_: str) -> float:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{id_}".encode(), digest_size=8).digest(), "big") / 2.0**64


@dataclass(frozen=True)
class MixPlan:
    whole: dict[str, int]        # domain → copies every document gets
    cutoff: dict[str, float]     # domain → documents with draw below it get one more
    seed: int

    def copies(self, domain: str, id_: str) -> int:
        if domain not in self.whole:
            return 1  # not in the mix: kept as is
        return self.whole[domain] + (1 if draw(self.seed, id_) < self.cutoff[domain] else 0)


def targets(counts: dict[str, int], config: MixingConfig) -> dict[str, int]:
    """Documents each weighted domain should have after mixing (largest remainders, so they sum exactly)."""
    mixed = {d: w for d, w in config.weights.items() if counts.get(d, 0) > 0 and w > 0}
    total = config.total_documents or sum(counts.get(d, 0) for d in config.weights)
    weight_sum = sum(mixed.values())
    if not mixed:
        return {d: 0 for d in config.weights}
    exact = {d: total * w / weight_sum for d, w in mixed.items()}
    result = {d: math.floor(v) for d, v in exact.items()}
    for d in sorted(exact, key=lambda d: (result[d] - exact[d], d))[: total - sum(result.values())]:
        result[d] += 1
    return {d: result.get(d, 0) for d in config.weights}


def plan(draws: dict[str, list[float]], config: MixingConfig) -> MixPlan:
    """`draws`: domain → the draw of each of its kept documents (what the driver gathers: 8 bytes a document)."""
    counts = {d: len(v) for d, v in draws.items()}
    goal = targets(counts, config)
    whole, cutoff = {}, {}
    for domain, target in goal.items():
        kept = counts.get(domain, 0)
        if kept == 0:
            continue
        whole[domain], extra = divmod(target, kept)
        ordered = sorted(draws[domain])
        cutoff[domain] = ordered[extra] if extra < kept else 1.0  # the `extra` smallest draws get one more
    return MixPlan(whole, cutoff, config.seed)


def report(counts: dict[str, int], mix: MixPlan, after: dict[str, int]) -> dict:
    return {"seed": mix.seed, "domains": {d: {"before": counts.get(d, 0), "after": after.get(d, 0),
                                              "factor": round(after.get(d, 0) / counts[d], 4) if counts.get(d) else 0.0}
                                          for d in sorted(set(counts) | set(after))}}


def apply(batch: dict, mix: MixPlan) -> dict:
    """Ray Data step on the decided rows: kept rows repeated per the plan; a kept row that gets no
    copy is marked `mix_downsample` (it goes to dropped/)."""
    out = {k: [] for k in batch}
    for row in range(len(batch["id"])):
        n = mix.copies(batch["domain"][row], batch["id"][row]) if not batch["reason"][row] else 1
        reason = batch["reason"][row] or ("mix_downsample" if n == 0 else "")
        for key in batch:
            out[key].extend([reason if key == "reason" else batch[key][row]] * max(n, 1))
    return out
