import pytest
import torch
from transformers import LlamaForCausalLM

from solo.config import TrainConfig, load_config
from solo.model import PRESETS, flops_per_token, llama_config, parameter_count
from solo.errors import SoloError
from solo.train import check_same_workers, checkpoint_due, deepspeed_config, learning_rate


def test_deepspeed_config_is_generated_from_ours():
    config = load_config(TrainConfig, None, ["workers=2", "micro_batch=4", "global_batch=32",
                                             "strategy.precision=bf16", "optim.grad_clip=0.5"])
    ds = deepspeed_config(config, workers=2)
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 32 == ds["train_micro_batch_size_per_gpu"] * 2 * 4
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5


def test_global_batch_stays_constant_when_workers_change():
    for workers in (1, 2, 4):
        config = load_config(TrainConfig, None, [f"workers={workers}", "micro_batch=2", "global_batch=16"])
        ds = deepspeed_config(config, workers)
        assert ds["train_micro_batch_size_per_gpu"] * workers * ds["gradient_accumulation_steps"] == 16


def test_param_offload_needs_stage_3():
    with pytest.raises(Exception, match="offload_params"):
        load_config(TrainConfig, None, ["strategy.zero_stage=2"])


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = load_config(TrainConfig, None, ["max_steps=100", "optim.lr=1.0", "optim.warmup_steps=10",
                                             "optim.min_lr_ratio=0.1"])
    lrs = [learning_rate(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert learning_rate(100, config) == pytest.approx(0.1)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_count_matches_the_real_model(preset):
    config = llama_config(preset, vocab_size=32000, seq_len=256)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())
    assert flops_per_token(config, 256) > 6 * parameter_count(config) - 1


def test_checkpoint_due_on_steps_last_step_or_elapsed_minutes():
    by_steps = load_config(TrainConfig, None, ["max_steps=100", "checkpoint_every=10"])
    assert [s for s in range(1, 101) if checkpoint_due(s, by_steps, minutes_since_save=99.0)] == list(range(10, 101, 10))
    timed = load_config(TrainConfig, None, ["max_steps=100", "checkpoint_every=50",
                                            "checkpoint_every_minutes=5"])
    assert not checkpoint_due(7, timed, minutes_since_save=4.9)
    assert checkpoint_due(7, timed, minutes_since_save=5.0)
    assert checkpoint_due(50, timed, minutes_since_save=0.0)
    assert checkpoint_due(100, timed, minutes_since_save=0.0)


def test_checkpoint_every_minutes_must_be_positive():
    with pytest.raises(Exception, match="checkpoint_every_minutes"):
        load_config(TrainConfig, None, ["checkpoint_every_minutes=0"])


def test_resuming_a_zero_checkpoint_on_another_worker_count_fails_clearly(tmp_path):
    tag = tmp_path / "step_00000004"
    tag.mkdir()
    (tmp_path / "latest").write_text("step_00000004")
    for rank in range(2):
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    check_same_workers(tmp_path, 2)
    with pytest.raises(SoloError, match="written by 2 workers but this run has 1"):
        check_same_workers(tmp_path, 1)
