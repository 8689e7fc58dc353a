"""LoRA and QLoRA through the real training loop (DeepSpeed on a one-process gloo group, 4-bit NF4
base on CPU), without Ray: the checkpoint sink here keeps checkpoints in a folder, as Ray Train's does."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from solo.config import checkout_root, load_config
from solo.runtime import worker_env
from solo.tokens.tokenizer import load
from solo.train.adapters import check_target_modules
from solo.train.config import FinetuneConfig
from solo.train.engines import deepspeed_config
from solo.train.job import TrainJob
from solo.train.loop import train_worker
from solo.train.sft import build_sft_rows

for key, value in worker_env().items():
    os.environ.setdefault(key, value)

ALPACA = (checkout_root() / "../shared/data/alpaca/alpaca_5000.json").resolve()


def alpaca_rows(tokenizer_dir: Path, config: FinetuneConfig, folder: Path) -> Path:
    from solo.tokens.tokenizer import load
    from solo.train.sft import build_sft_rows

    build_sft_rows(load(tokenizer_dir), config, folder, val_fraction=0.1)
    return folder


def test_adapters_train_without_zero3_partitioning():
    config = load_config(FinetuneConfig, None, ["method=qlora", "strategy.zero_stage=3",
                                                "strategy.offload_optimizer=cpu", "strategy.offload_params=cpu"])
    assert config.strategy.zero_stage == 3  # what the section says, for full SFT
    ds = deepspeed_config(config, workers=2)
    assert ds["zero_optimization"] == {"stage": 0} and ds["optimizer"]["params"]["torch_adam"]


def test_qlora_run_saves_peft_adapters_resumes_and_merges(tmp_path, tiny_model_dir, gloo_group, picked_sink):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = load_config(FinetuneConfig, None, [
        "method=qlora", f"data={ALPACA}", "max_examples=40", "seq_len=64", "workers=1", "micro_batch=2",
        "global_batch=2", "max_steps=3", "checkpoint_every=1", "log_every=3", "lora.rank=4",
        "lora.target_modules=[q_proj, v_proj, down_proj]", "optim.lr=0.01"])
    rows = alpaca_rows(tiny_model_dir, config, tmp_path / "rows")

    def job(output: Path) -> TrainJob:
        output.mkdir()
        return TrainJob(config=config, train_dir=str(rows / "train"), val_dir=str(rows / "val"),
                        tokenizer_dir=str(tiny_model_dir), output_dir=str(output), init_model_dir=str(tiny_model_dir))

    straight = tmp_path / "straight"
    metrics = train_worker(job(straight), picked_sink(tmp_path / "ckpt"))
    assert metrics["step"] == 3 and metrics["host_peak_gb"] > 0
    adapter = straight / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    # Adapter checkpoints hold the adapters and their optimizer state, not the frozen base's weights
    # (4-bit layers leave their small quantization constants, which are buffers, not parameters).
    saved = torch.load(next((tmp_path / "ckpt" / "step_1").rglob("mp_rank_00_model_states.pt")), weights_only=False)
    assert any("lora_" in name for name in saved["module"])
    assert not any(name.endswith(("proj.weight", "layernorm.weight")) for name in saved["module"])

    # A worker restarted from the step-1 checkpoint ends with the same adapters as the straight run.
    resumed = tmp_path / "resumed"
    train_worker(job(resumed), picked_sink(tmp_path / "ckpt2", resume_from=tmp_path / "ckpt" / "step_1"))
    from safetensors.torch import load_file

    a, b = load_file(adapter / "adapter_model.safetensors"), \
        load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # B starts at zero: it learned

    # The adapters load with peft, and the merged export is a plain model equal to base + adapters.
    tokens = torch.tensor([[5, 17, 300, 42, 9, 77]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapters = PeftModel.from_pretrained(base, str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(straight / "model").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(with_adapters(input_ids=tokens).logits, merged(input_ids=tokens).logits, atol=1e-4)
    assert (straight / "model" / "tokenizer.json").is_file()
    shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)


def test_a_target_module_the_model_lacks_is_named_before_any_worker_starts(tiny_model_dir):
    from solo.errors import SoloError
    from solo.train.adapters import check_target_modules

    check_target_modules(tiny_model_dir, load_config(FinetuneConfig, None, ["method=lora"]))
    with pytest.raises(SoloError, match="c_attn not in .*its Linear modules: down_proj"):
        check_target_modules(tiny_model_dir,
                             load_config(FinetuneConfig, None, ["lora.target_modules=[q_proj, c_attn]"]))


# ---------------------------------------------------------------- any causal LM architecture

LLAMA_LAYOUT = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_adapters_go_on_every_linear_of_the_decoder_layers_whatever_the_architecture(families, tmp_path):
    from transformers import GPT2Config, Phi3Config

    lora = load_config(FinetuneConfig, None, ["method=qlora"])
    for family in families.values():
        assert check_target_modules(family.folder, lora) == LLAMA_LAYOUT, family.name
    # Architectures that name them otherwise: found all the same, the output head left out.
    Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               pad_token_id=0).save_pretrained(tmp_path / "phi3")
    assert check_target_modules(tmp_path / "phi3", lora) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4).save_pretrained(tmp_path / "gpt2")
    assert check_target_modules(tmp_path / "gpt2", lora) == ["c_attn", "c_fc", "c_proj"]
    # A user's own list is kept as it is.
    explicit = load_config(FinetuneConfig, None, ["method=qlora", "lora.target_modules=[q_proj, v_proj]"])
    assert check_target_modules(families["mistral"].folder, explicit) == ["q_proj", "v_proj"]


def finetune_on(family, method: str, tmp_path: Path, picked_sink, extra: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """Two optimizer steps of `method` on the family's checkpoint with Alpaca data, through the real worker."""
    config = load_config(FinetuneConfig, None, [
        f"method={method}", f"data={ALPACA}", "max_examples=24", "seq_len=128", "workers=1", "micro_batch=2",
        "global_batch=2", "max_steps=2", "checkpoint_every=2", "log_every=1", "lora.rank=4", "optim.lr=0.01",
        *extra])
    rows = tmp_path / "rows"
    build_sft_rows(load(family.folder), config, rows, val_fraction=0.2, model_dir=family.folder)
    output = tmp_path / "out"
    output.mkdir()
    job = TrainJob(config=config, train_dir=str(rows / "train"), val_dir=str(rows / "val"),
                   tokenizer_dir=str(family.folder), output_dir=str(output), init_model_dir=str(family.folder))
    return output, train_worker(job, picked_sink(tmp_path / "ckpt"))


def test_qlora_trains_two_steps_on_each_family(family, tmp_path, gloo_group, picked_sink):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    output, metrics = finetune_on(family, "qlora", tmp_path, picked_sink)
    assert metrics["step"] == 2 and math.isfinite(metrics["loss"]) and math.isfinite(metrics["val_loss"])
    adapter = output / "adapter"
    assert sorted(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == LLAMA_LAYOUT
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at zero: it learned
    # The merged model is the family's own architecture, in full precision, and still stops at its end of turn.
    merged = AutoModelForCausalLM.from_pretrained(output / "model")
    assert type(merged).__name__ == family.architecture and merged.dtype == torch.float32
    end_of_turn = load(output / "model").convert_tokens_to_ids(family.end_of_turn)
    assert end_of_turn in GenerationConfig.from_pretrained(output / "model").eos_token_id
    shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)


def test_full_sft_of_a_half_precision_checkpoint_trains_in_fp32(families, tmp_path, gloo_group, picked_sink):
    from transformers import AutoModelForCausalLM

    family = families["mistral"]  # stored in fp16
    output, metrics = finetune_on(family, "sft", tmp_path, picked_sink, ("strategy.zero_stage=0",))
    assert metrics["step"] == 2
    trained = AutoModelForCausalLM.from_pretrained(output / "model")
    base = AutoModelForCausalLM.from_pretrained(family.folder, dtype=torch.float32)
    assert type(trained).__name__ == family.architecture and trained.dtype == torch.float32
    assert not torch.equal(trained.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight)
    shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)
