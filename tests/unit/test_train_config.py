import pytest
import torch
from transformers import LlamaForCausalLM

from solo.config import TrainConfig, load_config
from solo.model import PRESETS, flops_per_token, llama_config, parameter_count
from solo.train import deepspeed_config, learning_rate


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
