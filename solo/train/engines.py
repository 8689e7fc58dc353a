"""What a worker trains with: the model (built from a preset, or loaded) and the engine around it,
DeepSpeed's (ZeRO 0–3, CPU or NVMe offload, its config generated from `TrainConfig` here and never kept
by hand) or the layer-streaming one (solo.train.stream)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from solo.tokens.tokenizer import load, stop_token_ids
from solo.train import presets
from solo.train.adapters import adapter_model
from solo.train.config import TrainConfig
from solo.train.fast_path import resolve_switches
from solo.train.job import TrainJob
from solo.train.loss import use_fast_loss
from solo.train.presets import PRESETS, padded_vocab
from solo.train.stream import StreamEngine


def deepspeed_config(config: TrainConfig, workers: int) -> dict:
    strategy = config.strategy
    accumulation = config.global_batch // (config.micro_batch * workers)
    zero: dict = {"stage": strategy.zero_stage}
    if strategy.offload_optimizer != "none":
        zero["offload_optimizer"] = offload_target(strategy.offload_optimizer, strategy.nvme_path)
    if strategy.offload_params != "none":
        zero["offload_param"] = offload_target(strategy.offload_params, strategy.nvme_path)
    if strategy.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if strategy.zero_stage >= 1:
        zero["reduce_bucket_size"] = REDUCE_BUCKET_ELEMENTS
    optimizer_params: dict = {}
    if config.trains_adapters():
        # LoRA/QLoRA: plain data parallelism (ZeRO stage 0), whatever `strategy` says. ZeRO-3 would
        # have to partition the frozen base, and a 4-bit bitsandbytes weight (uint8 plus its
        # quantization state) cannot be split and regathered by it; what is left to shard, the
        # adapters and their optimizer state, is a few MB, so neither sharding nor offload pays.
        # torch's AdamW, since DeepSpeed's fused one needs CUDA and its CPU one needs offload.
        zero = {"stage": 0}
        optimizer_params["torch_adam"] = True
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": config.global_batch,
        "gradient_clipping": deepspeed_grad_clip(config),
        "zero_optimization": zero,
        "bf16": {"enabled": strategy.precision == "bf16"},
        "fp16": {"enabled": strategy.precision == "fp16"},
        "optimizer": optimizer_section(config, optimizer_params),
        "steps_per_print": 10**9,  # our own log line replaces DeepSpeed's
        "wall_clock_breakdown": False,
        **({"aio": NVME_AIO} if "nvme" in (strategy.offload_optimizer, strategy.offload_params) else {}),
    }


def deepspeed_grad_clip(config: TrainConfig) -> float:
    """`optim.grad_clip`, except for Muon at ZeRO 1-2: there DeepSpeed replaces each Muon matrix's gradient
    by its orthogonalized update before it measures the global norm. That norm is about the square root of
    the matrices' total rank whatever the gradients are, so clipping would shrink every step, AdamW's too,
    many times over (the demo at ZeRO-2 barely learned). Muon's update has a fixed size, which is what
    clipping is for; the worker's first line says that clipping is off."""
    if config.optim.name == "muon" and config.strategy.zero_stage in (1, 2):
        return 0.0
    return config.optim.grad_clip


def optimizer_section(config: TrainConfig, extra: dict) -> dict:
    """DeepSpeed's `optimizer` section. Muon is DeepSpeed's own (it orthogonalizes each matrix's whole
    gradient before ZeRO 1-2 split it), which tags the 2-D weights other than the embedding and the head for
    Muon and gives the rest, and their own rate, to AdamW."""
    o = config.optim
    adam = {"betas": [o.beta1, o.beta2], "weight_decay": o.weight_decay}
    if o.name == "adamw":
        return {"type": "AdamW", "params": {"lr": o.lr, **adam, **extra}}
    # Newton-Schulz by DeepSpeed's "gram" method: on the small Gram matrix, in fp16 where the device computes
    # it fast and in fp32 elsewhere (a CPU without AVX512-FP16); 30% faster than the plain iteration here.
    return {"type": "Muon", "params": {"lr": o.muon_lr, "muon_lr": o.muon_lr, "adam_lr": o.lr,
                                       "momentum": o.muon_momentum, "ns_method": "gram", "eps": 1e-8, **adam}}


# Gradients are reduced through a bucket of this many elements (DeepSpeed's `reduce_bucket_size`; its default,
# 5e8, is sized for GPU clusters). The bucket lives where the gradients are computed and fills up to it, or to the
# whole model when smaller, and ZeRO-3's reduce-scatter copies it (on the CPU twice), so at 5e8 a 125M model held
# its gradients three more times in host memory (0.9 GB measured, benchmarks/results/planner_vs_measured.md).
# 16M elements still moves tens of MB per collective, where NCCL and gloo run at full bandwidth. The planner
# counts this bucket (solo.train.planner.reduce_bucket_bytes).
REDUCE_BUCKET_ELEMENTS = 2**24


# libaio settings for NVMe offload: DeepSpeed's defaults (1 MiB blocks, 8 requests in flight per thread).
NVME_AIO = {"block_size": 1048576, "queue_depth": 8, "intra_op_parallelism": 1, "single_submit": False,
            "overlap_events": True}


def offload_target(device: str, nvme_path: str | None) -> dict:
    """DeepSpeed's `offload_optimizer`/`offload_param` section; with nvme, tensors are swapped to files
    under `nvme_path` (DeepSpeed adds zero_stage_3/<what>/rank<N>/ below it)."""
    target: dict = {"device": device, "pin_memory": False}
    if device == "nvme":
        target["nvme_path"] = str(Path(nvme_path).expanduser().resolve())
    return target


def param_swap_buffer_elements(job: TrainJob) -> int:
    """Elements of one NVMe swap buffer for parameters: the largest weight's (the embedding's or an MLP
    projection's) partition on one worker, which DeepSpeed swaps whole through one buffer. Its default,
    1e8, is too small for a 7B embedding on one GPU, and pins 2 GB of host memory for a small model."""
    if job.init_model_dir:
        shape = AutoConfig.from_pretrained(job.init_model_dir)
        vocab, hidden, intermediate = shape.vocab_size, shape.hidden_size, shape.intermediate_size
    else:
        preset = PRESETS[job.config.model]
        vocab = padded_vocab(len(load(job.tokenizer_dir)), job.config.vocab_multiple)
        hidden, intermediate = preset.hidden, preset.intermediate
    return -(-max(vocab, intermediate) * hidden // dist.get_world_size())


def build_model(job: TrainJob, ds_config: dict | None, device):
    """The model, created (or loaded) straight into ZeRO-3 partitions when stage 3 is on (no ds_config:
    whole, for the stream engine).

    Returns the model and the `HfDeepSpeedConfig` that must stay alive while it trains:
    transformers holds it weakly, and it is what tells transformers that ZeRO-3 is on.
    """
    if ds_config and ds_config["zero_optimization"].get("offload_param", {}).get("device") == "nvme":
        ds_config["zero_optimization"]["offload_param"]["buffer_size"] = param_swap_buffer_elements(job)
    zero3 = HfDeepSpeedConfig(ds_config) if ds_config and ds_config["zero_optimization"]["stage"] == 3 else None
    if job.config.trains_adapters():
        return adapter_model(job.init_model_dir, job.config, device), zero3
    if job.init_model_dir:
        # Any causal LM; a checkpoint stored in bf16 or fp16 is loaded as fp32 master weights.
        return AutoModelForCausalLM.from_pretrained(job.init_model_dir, dtype=torch.float32), zero3
    tokenizer = load(job.tokenizer_dir)
    seq_len = json.loads((Path(job.train_dir) / "index.json").read_text())["seq_len"]
    # No pad id in the model: padded positions carry label -100, and an embedding padding_idx
    # would have transformers zero a row that ZeRO-3 has already partitioned away.
    # The embedding padded to `vocab_multiple` rows; solo.train.save cuts it back to the tokenizer's vocabulary.
    llama = presets.llama_config(job.config.model, vocab_size=padded_vocab(len(tokenizer), job.config.vocab_multiple),
                                 seq_len=seq_len, eos_token_id=stop_token_ids(tokenizer))
    return LlamaForCausalLM._from_config(llama), zero3


def make_engine(job: TrainJob, workers: int, device, load_universal: bool = False):
    """The engine `engine:` names, both driven alike by train_worker (through `train_step`): DeepSpeed's (ZeRO,
    offload) or the layer-streaming one (solo.train.stream), with the loop's switches (`loop:`) applied. Returns
    the engine, the optimizer whose param_groups take the LR, the micro-batches per step, the switches and what
    must stay alive while it trains. `load_universal`: the checkpoint to resume is DeepSpeed's universal one
    (written by another worker count)."""
    import deepspeed

    config = job.config
    ds_config = deepspeed_config(config, workers)
    if load_universal:
        ds_config["checkpoint"] = {"load_universal": True}
    accumulation = ds_config["gradient_accumulation_steps"]
    stream = config.engine == "stream"
    model, zero3_alive = build_model(job, None if stream else ds_config, device)
    switches = resolve_switches(config, device.type == "cuda", llama_like=is_llama_like(model))
    if device.type == "cpu":
        # DeepSpeed's Muon wraps its update in torch.compile, which on the CPU costs half a minute of start-up
        # for no gain on matrices this small; and nothing else compiles on the CPU unless loop.compile says so.
        # (The stance is the process's: set both ways, for the next engine built in it.)
        torch.compiler.set_stance("default" if switches.compile else "force_eager")
    # from_pretrained hands back a model in eval mode, where transformers skips activation
    # checkpointing and dropout (LoRA's included) is off.
    model.train()
    if stream:
        engine = StreamEngine(model, config, device, accumulation, switches)
        return engine, engine.optimizer, accumulation, switches, None
    if switches.loss != "plain":
        use_fast_loss(model, switches.loss, switches.loss_chunk_tokens)
    if config.strategy.activation_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    client_optimizer = None
    if switches.fused_adamw:
        # torch's fused AdamW, one kernel over every tensor, in place of the optimizer section: the same update
        # as DeepSpeed's AdamW (one group, decoupled decay on every weight), without building its CUDA op.
        o = config.optim
        client_optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=(o.beta1, o.beta2),
                                             weight_decay=o.weight_decay, fused=True)
        del ds_config["optimizer"]
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, optimizer=client_optimizer,
                                                   config=ds_config)
    if switches.compile:
        engine.compile()  # the module's forward, in place: parameters and state_dict keep their names
    return engine, optimizer, accumulation, switches, zero3_alive


def is_llama_like(model) -> bool:
    """Whether the model has a Llama's layout (decoder under `.model`, a bias-free head under `.lm_head`): what
    the chunked and fused cross-entropies need."""
    head = getattr(model, "lm_head", None)
    return (isinstance(getattr(model, "model", None), torch.nn.Module) and isinstance(head, torch.nn.Linear)
            and head.bias is None and not getattr(model.config, "final_logit_softcapping", None))


def train_step(engine, micro_batches: list[dict]) -> torch.Tensor:
    """One optimizer step over a global batch's micro-batches (forward, backward, the optimizer's step at the
    last); returns the sum of their mean losses, on the device, without waiting for it. The stream engine walks
    every micro-batch through each layer while the layer's weights are on the device; DeepSpeed's engine takes
    them one after another, accumulating gradients."""
    if isinstance(engine, StreamEngine):
        return engine.train_step(micro_batches)
    loss_sum = None
    for inputs in micro_batches:
        out = engine(**inputs)
        engine.backward(out.loss)
        engine.step()
        loss = out.loss.detach().float()
        loss_sum = loss if loss_sum is None else loss_sum + loss
    return loss_sum
