"""LoRA and QLoRA: low-rank adapters (peft) on a frozen base, which QLoRA holds in 4-bit NF4 (bitsandbytes).

bitsandbytes 0.50 quantizes and runs 4-bit layers on CPU as well as on CUDA, so QLoRA needs no GPU
at the demo size. The adapters are saved in peft's format (`adapter_config.json`,
`adapter_model.safetensors`); merged into the base they make a plain Hugging Face folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
from transformers.pytorch_utils import Conv1D

from solo.errors import SoloError
from solo.train.config import FinetuneConfig

LINEAR = (torch.nn.Linear, Conv1D)  # the layers LoRA adapts


def compute_dtype(config: FinetuneConfig, cuda: bool):
    name = config.quantization.compute_dtype
    if name == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, name)


def load_base(model_dir: str, config: FinetuneConfig, device):
    """The frozen base of any causal LM architecture: 4-bit NF4/FP4 for qlora (its Linear layers become
    `bnb.nn.Linear4bit`, the rest in the compute dtype), else fp32 (bf16 under `strategy.precision: bf16`),
    whatever dtype the checkpoint is stored in: a CPU computes bf16 and fp16 slowly, and fp16 overflows."""
    if config.method != "qlora":
        dtype = torch.bfloat16 if config.strategy.precision == "bf16" else torch.float32
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    q = config.quantization
    dtype = compute_dtype(config, device.type == "cuda")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                      bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=dtype)
    on_cpu = device.type != "cuda"
    # On CPU the unquantized tensors (embeddings, norms) would otherwise stay views of the memory-
    # mapped checkpoint, which keeps every page of it that quantization read resident: the whole
    # fp32 file (measured: 0.28 GB of RSS on the 125m preset, for 39 MB of parameters).
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, dtype=dtype,
                                                device_map={"": "cpu" if on_cpu else device.index},
                                                disable_mmap=on_cpu)


def decoder_linear_names(model: torch.nn.Module) -> list[str]:
    """The last name part of every Linear module inside the model's repeated blocks (the decoder layers, whose
    names hold a layer number), the output head excepted: q_proj … down_proj in Llama, Qwen2 and Mistral,
    qkv_proj and gate_up_proj in Phi-3, c_attn, c_proj and c_fc in GPT-2 (whose Conv1D is a Linear with its
    weight transposed, which peft handles). bitsandbytes' Linear4bit, QLoRA's quantized layer, is a Linear too."""
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, LINEAR) and module is not head
                   and any(part.isdigit() for part in name.split("."))})


def adapter_model(model_dir: str, config: FinetuneConfig, device):
    """The base with fresh LoRA adapters on `config.lora.target_modules` (unset: every Linear of its decoder
    layers); only the adapters train."""
    # peft imports bitsandbytes, which takes seconds and on a CPU probes the hub for kernels (a line of
    # noise): only the runs that train or merge adapters pay for it.
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    base = load_base(model_dir, config, device)
    if config.method == "qlora":
        # Norms and embeddings to fp32 and inputs that carry gradients, so the adapters learn stably.
        base = prepare_model_for_kbit_training(base,
                                               use_gradient_checkpointing=config.strategy.activation_checkpointing)
    elif config.strategy.activation_checkpointing:
        # A recomputed block whose inputs need no gradient would give its adapters none either.
        base.enable_input_require_grads()
    lora = config.lora
    peft_config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules or decoder_linear_names(base)), bias="none",
                             task_type="CAUSAL_LM")
    return get_peft_model(base, peft_config)


def check_target_modules(model_dir: Path, config: FinetuneConfig) -> list[str]:
    """The modules that will get adapters: `lora.target_modules`, or those found in the model. Fails here, in one
    line, on a target module the model lacks: not in every worker, after Ray Train has restarted them
    `max_failures` times over."""
    with torch.device("meta"):  # the module tree without a byte of weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    if config.lora.target_modules is None:
        found = decoder_linear_names(model)
        if not found:
            raise SoloError(f"no Linear module in the decoder layers of {model_dir.name} ({type(model).__name__}) "
                            "to put adapters on: name them with --set lora.target_modules=[...]")
        return found
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, LINEAR)}
    missing = sorted(set(config.lora.target_modules) - names)
    if missing:
        raise SoloError(f"lora.target_modules: {', '.join(missing)} not in {model_dir.name} "
                        f"(its Linear modules: {', '.join(sorted(names))})")
    return list(config.lora.target_modules)


def merge_into_base(base_dir: str, adapter_dir: Path, target: Path) -> None:
    """The adapters folded into a full-precision copy of the base (never the 4-bit one, whose rounding
    would be baked in), saved as a plain model `AutoModelForCausalLM` loads."""
    from peft import PeftModel  # heavy, for adapters only: see adapter_model

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(target), safe_serialization=True)
