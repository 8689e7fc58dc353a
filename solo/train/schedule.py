"""How long a run trains and how its learning rate moves: a step budget, a wall-clock budget, or both
(the first reached stops the run), and a schedule that is a function of the share of that budget used,
so a run of any length ends annealed.

The share used, `progress`, is the larger of the two shares: steps done over `max_steps`, and seconds
spent over `max_minutes`. The schedule reads progress, never the step count alone; so a run stopped by
its clock has decayed its learning rate by then, just as a run stopped by its step count has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from solo.train.config import OptimConfig, TrainConfig


@dataclass(frozen=True)
class Budget:
    """When a run stops: after `max_steps` optimizer steps or `max_minutes` of wall-clock time, whichever
    comes first (either may be None, not both)."""

    max_steps: int | None
    max_minutes: float | None
    warmup_steps: int = 0

    @classmethod
    def of(cls, config: TrainConfig) -> Budget:
        return cls(config.max_steps, config.max_minutes, config.optim.warmup_steps)

    def progress(self, step: int, spent_s: float) -> float:
        """The share of the budget used after `step` steps and `spent_s` seconds: 1 or more means stop.

        By steps, the share is counted from the end of warmup (so a step-only run decays exactly as a
        plain warmup-then-cosine schedule over `max_steps` does); by time, from the start, since warmup is
        a few steps of a budget of minutes."""
        shares = []
        if self.max_steps is not None:
            if step >= self.max_steps:
                return 1.0
            after_warmup = max(1, self.max_steps - self.warmup_steps)
            shares.append(max(0.0, (step - self.warmup_steps) / after_warmup))
        if self.max_minutes is not None:
            shares.append(spent_s / (60 * self.max_minutes))
        return max(shares)

    def done(self, step: int, spent_s: float) -> bool:
        if self.max_steps is not None and step >= self.max_steps:
            return True
        return self.max_minutes is not None and spent_s >= 60 * self.max_minutes

    def eta_s(self, step: int, spent_s: float, seconds_per_step: float) -> float:
        """Seconds left: to the last step at the current pace, or to the end of the clock, whichever is sooner."""
        left = []
        if self.max_steps is not None:
            left.append(max(0, self.max_steps - step) * seconds_per_step)
        if self.max_minutes is not None:
            left.append(max(0.0, 60 * self.max_minutes - spent_s))
        return min(left)


def lr_factor(step: int, progress: float, optim: OptimConfig) -> float:
    """The learning rate at `step`, as a share of each parameter group's peak, given the budget's
    `progress` so far (Budget.progress after the previous step).

    Linear warmup over `warmup_steps`, then
    - cosine: a half cosine from 1 to `min_lr_ratio` over the whole budget;
    - wsd (warmup, stable, decay): 1 until the last `decay_fraction` of the budget, then a straight line
      down to `min_lr_ratio` at its end.
    """
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    floor = optim.min_lr_ratio
    if optim.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_starts = 1 - optim.decay_fraction
    if progress <= decay_starts:
        return 1.0
    return floor + (1 - floor) * (1 - progress) / optim.decay_fraction


def learning_rate(step: int, config: TrainConfig) -> float:
    """The AdamW parameters' learning rate at `step` of a run budgeted in steps alone (the plain loops of the
    benchmarks and tests, which have no clock to read)."""
    return config.optim.lr * lr_factor(step, Budget.of(config).progress(step, 0.0), config.optim)
