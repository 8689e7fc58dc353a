import pytest
import torch
from transformers import LlamaForCausalLM

from solo.config import load_config
from solo.errors import SoloError
from solo.train.checkpoints import checkpoint_workers, convert_for_worker_count, newest_checkpoint, resumes_universal
from solo.train.config import TrainConfig
from solo.train.engines import deepspeed_config
from solo.train.loop import checkpoint_due
from solo.train.presets import PRESETS, flops_per_token, llama_config, parameter_count


def test_deepspeed_config_is_generated_from_ours():
    config = load_config(TrainConfig, None, ["workers=2", "micro_batch=4", "global_batch=32", "optim.name=adamw",
                                             "strategy.zero_stage=3", "strategy.offload_optimizer=cpu",
                                             "strategy.offload_params=cpu", "strategy.precision=bf16",
                                             "optim.grad_clip=0.5"])
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
        config = load_config(TrainConfig, None, [f"workers={workers}", "micro_batch=2", "global_batch=16",
                                                 "strategy.zero_stage=0"])
        ds = deepspeed_config(config, workers)
        assert ds["train_micro_batch_size_per_gpu"] * workers * ds["gradient_accumulation_steps"] == 16


def test_param_offload_needs_stage_3():
    with pytest.raises(Exception, match="offload_params"):
        load_config(TrainConfig, None, ["strategy.zero_stage=2", "strategy.offload_params=cpu"])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_count_matches_the_real_model(preset):
    config = llama_config(preset, vocab_size=32000, seq_len=256)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())
    assert flops_per_token(config, 256) > 6 * parameter_count(config) - 1


def test_checkpoint_due_on_steps_last_step_or_elapsed_minutes():
    by_steps = load_config(TrainConfig, None, ["max_steps=100", "checkpoint_every=10"])
    assert [s for s in range(1, 101) if checkpoint_due(s, by_steps, minutes_since_save=99.0)] == \
        list(range(10, 101, 10))
    timed = load_config(TrainConfig, None, ["max_steps=100", "checkpoint_every=50",
                                            "checkpoint_every_minutes=5"])
    assert not checkpoint_due(7, timed, minutes_since_save=4.9)
    assert checkpoint_due(7, timed, minutes_since_save=5.0)
    assert checkpoint_due(50, timed, minutes_since_save=0.0)
    assert checkpoint_due(100, timed, minutes_since_save=0.0)


def test_checkpoint_every_minutes_must_be_positive():
    with pytest.raises(Exception, match="checkpoint_every_minutes"):
        load_config(TrainConfig, None, ["checkpoint_every_minutes=0"])


@pytest.mark.parametrize("under", ["checkpoints", "ray/train/checkpoint_2026-01-01_00-00-00.000000"])
def test_a_checkpoint_from_another_worker_count_resumes_only_through_its_universal_form(tmp_path, under):
    folder = tmp_path / under
    (folder / "step_00000004").mkdir(parents=True)
    (folder / "latest").write_text("step_00000004")
    for rank in range(2):
        (folder / "step_00000004" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    resume = newest_checkpoint(tmp_path)
    assert (resume.folder, resume.tag) == (folder, "step_00000004")
    assert checkpoint_workers(resume) == 2
    assert not resumes_universal(resume, 2)
    with pytest.raises(SoloError, match="written by 2 workers and has no universal form.*--set workers=2"):
        resumes_universal(resume, 1)
    (folder / "universal").mkdir()
    (folder / "universal" / "latest_universal").write_text("step_00000004")
    assert resumes_universal(resume, 1)
    # Already converted: the driver leaves it as it is (a real conversion runs in test_launcher.py).
    convert_for_worker_count(tmp_path, load_config(TrainConfig, None, ["workers=1"]))
    assert (folder / "universal" / "latest_universal").read_text() == "step_00000004"


def test_the_worker_count_does_not_change_the_stage_fingerprint():
    two, one = (load_config(TrainConfig, None, [f"workers={w}", "micro_batch=2", "global_batch=8"]) for w in (2, 1))
    assert two.fingerprint() == one.fingerprint()
    assert two.fingerprint() != load_config(TrainConfig, None,
                                            ["workers=2", "micro_batch=4", "global_batch=8"]).fingerprint()


def test_nvme_offload_generates_deepspeed_nvme_sections(tmp_path):
    config = load_config(TrainConfig, None, ["optim.name=adamw", "strategy.zero_stage=3",
                                             "strategy.offload_optimizer=nvme", "strategy.offload_params=nvme",
                                             f"strategy.nvme_path={tmp_path}"])
    zero = deepspeed_config(config, workers=2)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "nvme", "nvme_path": str(tmp_path), "pin_memory": False}
    assert zero["offload_param"] == {"device": "nvme", "nvme_path": str(tmp_path), "pin_memory": False}
    assert deepspeed_config(config, workers=2)["aio"]["block_size"] == 1048576
    assert "aio" not in deepspeed_config(load_config(TrainConfig, None, ["strategy.zero_stage=0"]), workers=2)


def test_gradients_reduce_through_a_bucket_of_16m_elements_not_deepspeeds_5e8():
    # At DeepSpeed's default a 125M model's gradients all fit in the bucket, which ZeRO-3's reduce-scatter on the
    # CPU copies twice more: 0.8 GB of host memory (benchmarks/results/planner_vs_measured.md).
    for stage, params in ((3, "cpu"), (3, "none"), (2, "none")):
        config = load_config(TrainConfig, None, [f"strategy.zero_stage={stage}", f"strategy.offload_params={params}",
                                                 "optim.name=adamw"])
        assert deepspeed_config(config, workers=2)["zero_optimization"]["reduce_bucket_size"] == 16_777_216
    plain = load_config(TrainConfig, None, ["strategy.zero_stage=0", "strategy.offload_optimizer=none",
                                            "strategy.offload_params=none"])
    assert "reduce_bucket_size" not in deepspeed_config(plain, workers=2)["zero_optimization"]


@pytest.mark.parametrize("path, error", [(None, "needs nvme_path"), ("missing", "not a writable folder"),
                                         ("a-file", "not a writable folder")])
def test_nvme_offload_needs_a_writable_folder(tmp_path, path, error):
    (tmp_path / "a-file").write_text("")
    overrides = ["strategy.offload_optimizer=nvme"] + ([f"strategy.nvme_path={tmp_path / path}"] if path else [])
    with pytest.raises(SoloError, match=error):
        load_config(TrainConfig, None, overrides)


def test_the_launchers_process_count_must_match_workers(monkeypatch):
    from solo.train.launch import start_launched

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SoloError, match="launcher started 2 processes but the config says workers: 1.*--set workers=2"):
        start_launched(load_config(TrainConfig, None, ["workers=1", "micro_batch=2", "global_batch=4"]))


def test_a_set_inside_strategy_auto_spells_the_strategy_out():
    """configs/pretrain/default.yaml says `strategy: auto`; `--set strategy.zero_stage=3` asks for a strategy."""
    config = load_config(TrainConfig, "configs/pretrain/default.yaml",
                         ["optim.name=adamw", "strategy.zero_stage=3", "strategy.offload_optimizer=cpu"])
    assert config.strategy.zero_stage == 3 and config.strategy.offload_optimizer == "cpu"
    with pytest.raises(SoloError, match="--set max_steps.every: max_steps"):
        load_config(TrainConfig, "configs/pretrain/default.yaml", ["max_steps.every=3"])


def test_muon_at_zero_1_and_2_leaves_clipping_to_its_fixed_size_updates():
    """DeepSpeed measures Muon's orthogonalized updates at ZeRO 1-2, so clipping is off there, and only there."""
    for stage, optim, clip in [(0, "muon", 1.0), (2, "muon", 0.0), (1, "muon", 0.0), (2, "adamw", 1.0)]:
        config = TrainConfig(strategy={"zero_stage": stage}, optim={"name": optim})
        assert deepspeed_config(config, workers=2)["gradient_clipping"] == clip, (stage, optim)


def test_a_rule_across_settings_is_one_line_in_its_own_words():
    with pytest.raises(SoloError) as refused:
        load_config(TrainConfig, "configs/pretrain/default.yaml", ["engine=stream", "optim.name=muon"])
    assert str(refused.value) == ("optim.name: muon cannot run in engine: stream, whose optimizer lives in host "
                                  "memory: use optim.name: adamw")
