"""The run's budget (steps, minutes or both) and the learning-rate schedules read from it."""

import math

import pytest

from solo.config import ConfigError, load_config
from solo.train.config import FinetuneConfig, OptimConfig, TrainConfig
from solo.train.schedule import Budget, learning_rate, lr_factor


def test_a_step_budget_decays_as_a_plain_warmup_then_cosine_schedule():
    config = load_config(TrainConfig, None, ["max_steps=100", "optim.name=adamw", "optim.schedule=cosine",
                                             "optim.lr=1.0", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    lrs = [learning_rate(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    plain = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90)) for s in range(10, 100)]
    assert lrs[10:] == pytest.approx(plain)
    assert learning_rate(100, config) == pytest.approx(0.1)


def test_a_time_budget_stops_the_run_and_anneals_by_the_share_of_minutes_spent():
    budget = Budget(max_steps=None, max_minutes=2.0)
    assert budget.progress(step=500, spent_s=60) == pytest.approx(0.5)
    assert not budget.done(step=10**6, spent_s=119.9) and budget.done(step=3, spent_s=120)
    optim = OptimConfig(schedule="cosine", min_lr_ratio=0.1, warmup_steps=5)
    assert lr_factor(100, budget.progress(100, 0), optim) == pytest.approx(1.0)
    assert lr_factor(100, budget.progress(100, 60), optim) == pytest.approx(0.55)
    assert lr_factor(100, budget.progress(100, 119.99), optim) == pytest.approx(0.1, abs=1e-6)
    assert budget.eta_s(step=100, spent_s=90, seconds_per_step=0.5) == pytest.approx(30)


@pytest.mark.parametrize("steps, spent_s, stops", [(50, 30.0, False), (100, 30.0, True), (50, 60.0, True)])
def test_with_both_budgets_the_first_reached_stops_the_run(steps, spent_s, stops):
    budget = Budget(max_steps=100, max_minutes=1.0)
    assert budget.done(steps, spent_s) is stops
    assert budget.eta_s(50, 30.0, seconds_per_step=1.0) == pytest.approx(30)  # the clock's 30 s before 50 steps


def test_wsd_holds_the_peak_then_decays_in_a_straight_line_over_its_last_share():
    optim = OptimConfig(schedule="wsd", decay_fraction=0.25, min_lr_ratio=0.0, warmup_steps=4)
    assert [lr_factor(s, 0.0, optim) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(10, 0.75, optim) == 1.0
    assert lr_factor(10, 0.875, optim) == pytest.approx(0.5)
    assert lr_factor(10, 1.0, optim) == pytest.approx(0.0)
    assert lr_factor(10, 1.5, optim) == pytest.approx(0.0)


def test_max_minutes_alone_lets_the_clock_decide_and_neither_takes_the_default_steps():
    assert load_config(TrainConfig, None, ["max_minutes=4"]).max_steps is None
    assert load_config(TrainConfig, None, []).max_steps == TrainConfig.DEFAULT_STEPS
    assert load_config(FinetuneConfig, None, []).max_steps == FinetuneConfig.DEFAULT_STEPS
    both = load_config(TrainConfig, None, ["max_minutes=4", "max_steps=7"])
    assert (both.max_steps, both.max_minutes) == (7, 4)
    with pytest.raises(ConfigError, match="max_minutes"):
        load_config(TrainConfig, None, ["max_minutes=0"])


@pytest.mark.parametrize("overrides, says", [
    (["engine=stream"], "engine: stream"),
    (["strategy.offload_optimizer=cpu"], "offload_optimizer: cpu"),
    (["strategy.zero_stage=3"], "zero_stage: 3"),
])
def test_muon_where_it_cannot_run_is_refused_in_one_line_naming_the_way_out(overrides, says):
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, None, ["optim.name=muon", *overrides])
    message = str(error.value)
    assert says in message and "optim.name: adamw" in message and "\n" not in message


def test_muon_trains_no_lora_adapters():
    with pytest.raises(ConfigError, match="LoRA"):
        load_config(FinetuneConfig, None, ["optim.name=muon", "method=lora"])
    assert load_config(FinetuneConfig, None, ["optim.name=muon", "method=sft"]).optim.name == "muon"
