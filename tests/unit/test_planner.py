"""The memory and speed planner (`solo plan`) and `strategy: auto`. Expected values are worked out by hand
from the bytes each strategy must hold, not read off the planner's output."""

import dataclasses
import json
from pathlib import Path

import pytest

from solo.cli.main import main
from solo.cli.plan import render, strategy_yaml
from solo.config import ConfigError, load_config
from solo.train import planner
from solo.train.auto_strategy import resolve_auto_strategy
from solo.train.config import FinetuneConfig, StrategyConfig, TrainConfig
from solo.train.job import TrainJob
from solo.train.presets import PRESETS, llama_config, parameter_count

GB = 1024**3
USABLE = 1 - planner.MEMORY_MARGIN


def gpu(gpu_mem: float, host_mem: float, nvme: float | None = None) -> planner.Hardware:
    return planner.Hardware(gpu_mem_gb=gpu_mem, host_mem_gb=host_mem, nvme_gb=nvme)


def plan_for(preset: str, hardware: planner.Hardware, **kwargs) -> planner.Plan:
    return planner.plan(planner.ModelShape.preset(preset, 32000, 2048), hardware, 2048, **kwargs)


def params(preset: str) -> int:
    return parameter_count(llama_config(preset, vocab_size=32000, seq_len=2048))


def test_125m_on_a_24_gb_gpu_needs_no_offload():
    # 100M parameters × 20 bytes (bf16 weights and gradients, fp32 master, Adam's two moments, fp32 gradients)
    # is under 2 GB: everything fits on the card, and offload or recomputation would only slow it down.
    result = plan_for("125m", gpu(24, 64))
    pick = result.pick.strategy
    assert (pick.engine, pick.offload_optimizer, pick.offload_params) == ("deepspeed", "none", "none")
    assert not pick.activation_checkpointing
    zero0 = next(e for e in result.rows if e.strategy.label() == "ZeRO-0 · bf16")
    assert 20 * params("125m") / GB < zero0.gpu_gb < 24 * USABLE


def test_7b_optimizer_state_fits_neither_a_24_gb_gpu_nor_64_gb_of_host_memory():
    # fp32 master weights and Adam's two moments are 12 bytes a parameter: 5.8B × 12 B = 64.8 GB, whole on the
    # GPU (21.6 GB usable) or in host memory (57.6 GB usable). Neither holds it, so nothing fits without NVMe.
    assert 12 * params("7b") / GB > 64 * USABLE > 24 * USABLE
    result = plan_for("7b", gpu(24, 64))
    assert result.pick is None
    assert all(not e.fits for e in result.rows)
    assert "nothing fits" in render(result)


def test_7b_with_an_nvme_drive_moves_the_optimizer_state_there():
    result = plan_for("7b", gpu(24, 64, nvme=1000))
    pick = result.pick
    assert pick.strategy.zero_stage == 3 and pick.strategy.offload_optimizer == "nvme"
    assert pick.nvme_gb >= 12 * params("7b") / GB
    assert pick.gpu_gb <= 24 * USABLE and pick.host_gb <= 64 * USABLE
    assert "offload_optimizer: nvme" in strategy_yaml(pick.strategy)


def test_7b_with_144_gb_of_host_memory_offloads_to_it_or_streams_layers():
    # The stream engine holds 16 bytes a parameter, its bf16 copies 2 more, each unit's buffers pinned in
    # power-of-two blocks: 115 GB for 7b, just over 90% of 128 GB; DeepSpeed's offload, with its buffer factor, more.
    result = plan_for("7b", gpu(24, 144))
    pick = result.pick
    s = pick.strategy
    assert s.engine == "stream" or (s.zero_stage >= 1 and s.offload_optimizer == "cpu")
    assert pick.gpu_gb <= 24 * USABLE
    assert pick.host_gb >= 12 * params("7b") / GB  # the optimizer state lives in host memory
    # Left on the card, bf16 weights alone (2 bytes × 5.8B = 10.8 GB) plus 18 bytes of training state each do not fit.
    assert all(not e.fits for e in result.rows if e.strategy.engine == "deepspeed" and e.strategy.offloads() == 0)


def test_checkpointing_saves_gpu_memory_and_costs_speed():
    rows = {e.strategy.label(): e for e in plan_for("1.3b", gpu(80, 512)).rows}
    plain, checkpointed = rows["ZeRO-3 · optimizer→cpu · bf16"], rows["ZeRO-3 · optimizer→cpu · ckpt · bf16"]
    assert checkpointed.gpu_gb < plain.gpu_gb
    assert checkpointed.tokens_per_s < plain.tokens_per_s


def test_memory_grows_with_the_preset():
    hardware = gpu(24, 64)
    plans = [plan_for(preset, hardware) for preset in PRESETS]
    for label in ("ZeRO-0 · bf16", "ZeRO-3 · optimizer→cpu · params→cpu · ckpt · bf16",
                  "stream (layers from host) · bf16"):
        rows = [next(e for e in p.rows if e.strategy.label() == label) for p in plans]
        assert all(a.gpu_gb < b.gpu_gb and a.host_gb <= b.host_gb for a, b in zip(rows, rows[1:])), label


def test_only_strategies_deepspeed_accepts_are_planned():
    found = planner.strategies(gpu(24, 64, nvme=100))
    for s in found:
        if s.engine == "deepspeed":
            assert s.offload_params == "none" or s.zero_stage == 3
            assert "nvme" not in (s.offload_optimizer, s.offload_params) or s.zero_stage == 3
            assert s.offload_optimizer == "none" or s.zero_stage >= 1
    assert not any("nvme" in (s.offload_optimizer, s.offload_params) for s in planner.strategies(gpu(24, 64)))
    on_cpu = planner.strategies(planner.Hardware(gpu_mem_gb=None, host_mem_gb=16, gpus=2))
    assert {s.precision for s in on_cpu} == {"fp32"} and {s.engine for s in on_cpu} == {"deepspeed"}


def cpu_row(preset: str, zero_stage: int, optimizer: str, params: str) -> tuple[planner.Estimate, planner.ModelShape]:
    model = planner.ModelShape.preset(preset, 4096, 256)
    strategy = planner.Strategy("deepspeed", zero_stage, optimizer, params, False, "fp32")
    hardware = planner.Hardware(gpu_mem_gb=None, host_mem_gb=24, gpus=1)
    return planner.estimate(strategy, model, hardware, 256, 1, 1), model


def test_the_gradient_bucket_is_counted_where_it_lives():
    # DeepSpeed's reduce bucket at ZeRO-1..3: 2^24 = 16,777,216 elements (solo.train.loop sets reduce_bucket_size).
    # On a GPU, allocated whole in bf16: 32 MiB, and at ZeRO-3 the reduce-scatter's concatenated copy, 32 MiB
    # more. On the CPU, fp32 and only as far as gradients fill it; at ZeRO-3 DeepSpeed's copy and gloo's: 12 bytes
    # an element, of the bucket or of a smaller model; ZeRO-2 reduces it in place, 4 bytes an element.
    model_125m = planner.ModelShape.preset("125m", 4096, 256)
    model_demo = planner.ModelShape.preset("demo", 4096, 256)
    zero3 = planner.Strategy("deepspeed", 3, "cpu", "cpu", False, "bf16")
    zero2 = planner.Strategy("deepspeed", 2, "cpu", "none", False, "bf16")
    assert planner.reduce_bucket_bytes(zero3, model_125m, on_gpu=True) == 64 * 1024**2
    assert planner.reduce_bucket_bytes(zero2, model_125m, on_gpu=True) == 32 * 1024**2
    fp32 = dataclasses.replace(zero3, precision="fp32")
    assert model_125m.parameters > 16_777_216 > model_demo.parameters
    assert planner.reduce_bucket_bytes(fp32, model_125m, on_gpu=False) == 16_777_216 * 12
    assert planner.reduce_bucket_bytes(fp32, model_demo, on_gpu=False) == model_demo.parameters * 12
    zero2_fp32 = dataclasses.replace(zero2, precision="fp32")
    assert planner.reduce_bucket_bytes(zero2_fp32, model_125m, on_gpu=False) == 16_777_216 * 4
    zero0 = planner.Strategy("deepspeed", 0, "none", "none", False, "fp32")
    assert planner.reduce_bucket_bytes(zero0, model_125m, on_gpu=False) == 0


def test_125m_zero3_with_cpu_offload_on_the_cpu_adds_up_by_hand():
    # 125m at vocab 4096 (h 768, i 2048): the largest module is the embedding, 4096 × 768 = 3,145,728 weights.
    # DeepSpeed's estimator (offload of both, zero.Init): host 18 bytes × p × 1.5; device 4 × largest. fp32 adds
    # 2 bytes to each of weights and gradients (4p), and on the CPU the device side gets the 1.5 factor too.
    # Then the bucket (2^24 × 12), the activations, and one worker's baseline.
    row, model = cpu_row("125m", 3, "cpu", "cpu")
    p, largest = model.parameters, 4096 * 768
    assert model.largest_module == largest
    device = (4 * largest + 4 * p) * 1.5
    activations = planner.activation_bytes(model, 256, 1, False, 4)
    expected = (device + activations + 16_777_216 * 12 + 18 * p * 1.5) / GB + planner.WORKER_BASELINE_GB
    assert row.host_gb == pytest.approx(expected, rel=1e-9)


@pytest.fixture
def cli_env(monkeypatch):
    """`solo plan` names DeepSpeed's accelerator in its own process's environment; undone after each test."""
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)


def test_solo_plan_prints_the_table_and_the_strategy_to_paste(capsys, cli_env):
    assert main(["plan", "--preset", "125m", "--gpu-mem", "24", "--host-mem", "64"]) == 0
    out = capsys.readouterr().out
    assert "125m:" in out and "GFLOPs/token" in out
    assert "GPU GB" in out and "host GB" in out and "NVMe GB" in out and "tokens/s" in out and "fits?" in out
    assert "pick: ZeRO-0 · bf16" in out
    pasted = out.split("pick:", 1)[1].split("\n", 2)[2]
    import yaml

    assert StrategyConfig.model_validate(yaml.safe_load(pasted)["strategy"]).zero_stage == 0


def test_solo_plan_without_a_preset_lists_every_preset(capsys, cli_env):
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in out for name in PRESETS)


def test_solo_plan_refuses_zero_gpu_memory_in_one_line(capsys, cli_env):
    assert main(["plan", "--preset", "7b", "--gpu-mem", "0", "--host-mem", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "solo: --gpu-mem must be a positive number of GB (GB/s for --pcie-gbps), not 0"


def test_strategy_auto_validates_from_yaml(tmp_path):
    path = tmp_path / "auto.yaml"
    path.write_text("model: demo\nstrategy: auto\n")
    assert load_config(TrainConfig, path).strategy == "auto"
    assert load_config(TrainConfig, None, ["strategy=auto"]).strategy == "auto"
    path.write_text("strategy: fastest\n")
    with pytest.raises(ConfigError, match="strategy"):
        load_config(TrainConfig, path)


def auto_job(tmp_path, tiny_model_dir, config) -> TrainJob:
    (tmp_path / "train").mkdir(parents=True)
    (tmp_path / "train" / "index.json").write_text(json.dumps({"seq_len": 64}))
    return TrainJob(config=config, train_dir=str(tmp_path / "train"), val_dir=None, tokenizer_dir=str(tiny_model_dir),
                    output_dir=str(tmp_path / "out"))


def test_strategy_auto_resolves_on_cpu_to_plain_fp32_data_parallelism(tmp_path, tiny_model_dir, capsys):
    # On the CPU the device is host memory: offload frees nothing and costs copies, ZeRO-3 costs its gathers and
    # recomputation costs a third more FLOPs, and the demo model fits many times over: ZeRO-0, fp32.
    config = load_config(TrainConfig, None, ["strategy=auto", "device=cpu", "workers=1", "micro_batch=2",
                                             "global_batch=2"])
    job, record = resolve_auto_strategy(auto_job(tmp_path, tiny_model_dir, config))
    assert job.config.strategy == StrategyConfig(zero_stage=0, offload_optimizer="none", offload_params="none",
                                                 activation_checkpointing=False, precision="fp32")
    assert job.config.engine == "deepspeed"
    assert record["strategy"] == "auto: ZeRO-0 · fp32" and record["planned_host_gb"] > 0
    assert "planned_gpu_gb" not in record
    assert "strategy: auto: ZeRO-0 · fp32" in capsys.readouterr().out
    explicit = load_config(TrainConfig, None, ["device=cpu", "strategy.zero_stage=0"])
    explicit_job = auto_job(tmp_path / "explicit", tiny_model_dir, explicit)
    assert resolve_auto_strategy(explicit_job) == (explicit_job, {})


def test_strategy_auto_for_adapters_is_plain_data_parallelism(tmp_path, tiny_model_dir):
    config = FinetuneConfig(method="lora", strategy="auto", device="cpu", workers=1, micro_batch=2, global_batch=2)
    job, record = resolve_auto_strategy(auto_job(tmp_path, tiny_model_dir, config), quiet=True)
    assert job.config.strategy.zero_stage == 0 and job.config.strategy.precision == "fp32"
    assert "adapters" in record["strategy"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_tensor_sizes_add_up_to_the_parameters(preset):
    for tied in (True, False):
        config = llama_config(preset, vocab_size=32000, seq_len=2048)
        config.tie_word_embeddings = tied
        shape = planner.ModelShape.of(preset, config, 2048)
        assert sum(shape.tensor_sizes()) == shape.parameters == parameter_count(config)


def test_the_stream_engines_host_memory_on_a_gpu_is_what_an_h200_run_measured():
    # Pinned on a GPU, each master weight takes a power-of-two block of host memory: the plan counts it, so
    # it is within 10% of the host peaks the stream engine reached on an H200 (and under 24 GB of the card).
    measured = json.loads((Path(__file__).parents[2] / "benchmarks/results/stream_vs_zero3.json").read_text())
    assert measured["device"] == "NVIDIA H200"
    hardware = planner.Hardware(gpu_mem_gb=measured["device_memory_cap_gb"], host_mem_gb=126, gpu="H200",
                                host_cores=16)
    for preset in ("1.3b", "2.7b"):
        run = measured["runs"][preset]["stream"]
        assert run["ok"]
        shape = planner.ModelShape.preset(preset, measured["vocab_size"], measured["seq_len"])
        accumulation = measured["global_batch"] // measured["micro_batch"]
        # The engine as it ran then: each fp32 weight pinned alone, streamed per micro-batch.
        result = planner.plan(shape, hardware, measured["seq_len"], micro_batch=measured["micro_batch"],
                              accumulation=accumulation, traffic=planner.StreamTraffic.per_micro_batch(accumulation))
        stream = next(e for e in result.rows if e.strategy.engine == "stream")
        assert stream.host_gb == pytest.approx(run["host_peak_gb"], rel=0.10)
        assert stream.gpu_gb >= run["gpu_peak_gb"]


def test_the_stream_engine_keeps_boundaries_on_the_gpu_while_half_its_free_memory_holds_them():
    # 2.7b, 32 micro-batches of 2 × 2,048 tokens: every micro-batch's input to each of 32 layers, bf16, is
    # 32 × 32 × 4,096 × 2,560 × 2 bytes = 21.5 GB. An 80 GB card keeps them all; a 24 GB card half of what is
    # free beside the engine's working set, and host memory the rest (pinned, copied out and back once a step).
    model = planner.ModelShape.preset("2.7b", 32000, 2048)
    stream = planner.Strategy("stream", 0, "none", "none", True, "bf16")
    boundaries = 32 * 32 * 4096 * 2560 * 2

    def host_growth(gpu_mem: float) -> tuple[float, planner.Estimate]:
        hardware = planner.Hardware(gpu_mem_gb=gpu_mem, host_mem_gb=512)
        one = planner.estimate(stream, model, hardware, 2048, 2, 1)
        step = planner.estimate(stream, model, hardware, 2048, 2, 32)
        return (step.host_gb - one.host_gb) * GB, step

    grown, step = host_growth(80)
    assert grown == 0 and step.gpu_gb > 21.5
    grown, step = host_growth(24)
    assert boundaries / 2 < grown < boundaries and step.gpu_gb <= 24 * USABLE
