"""A trained model out of the engine: a Hugging Face folder with its tokenizer, or LoRA adapters in peft's
format (and the model with them merged)."""

from __future__ import annotations

from pathlib import Path

from transformers import GenerationConfig

from solo.tokens.tokenizer import load, stop_token_ids
from solo.train.adapters import merge_into_base
from solo.train.job import TrainJob


def save_model(engine, job: TrainJob, rank: int) -> None:
    """Consolidate the (possibly sharded) weights into a Hugging Face folder on rank 0; for LoRA/QLoRA,
    the adapters in peft's format under adapter/ and, with `merge`, the merged model under model/."""
    if job.config.trains_adapters():
        if rank == 0:
            export_adapters(engine, job)
        return
    if job.config.engine == "deepspeed" and job.config.strategy.zero_stage == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # gathers on every rank, returns on rank 0
    else:
        state_dict = engine.module.state_dict()
    if rank != 0:
        return
    target = Path(job.output_dir) / "model"
    model = engine.module
    vocab = len(load(job.tokenizer_dir))
    trained_vocab = model.config.vocab_size
    if job.init_model_dir is None and trained_vocab > vocab:
        # The embedding was padded to `vocab_multiple` rows for speed (solo.train.presets.padded_vocab): what is
        # saved, and so exported, served and evaluated, has the tokenizer's vocabulary exactly.
        state_dict = unpadded(state_dict, vocab)
        model.config.vocab_size = vocab
    try:
        model.save_pretrained(str(target), state_dict=state_dict, safe_serialization=True)
    finally:
        model.config.vocab_size = trained_vocab
    save_tokenizer(job, target)


def unpadded(state_dict: dict, vocab: int) -> dict:
    """The state dict with the embedding's (and an untied head's) rows past `vocab` dropped; a tied head stays
    the embedding's very tensor, so it is saved once."""
    embedding = state_dict["model.embed_tokens.weight"]
    cut = {**state_dict, "model.embed_tokens.weight": embedding[:vocab].clone()}
    if "lm_head.weight" in state_dict:
        head = state_dict["lm_head.weight"]
        cut["lm_head.weight"] = cut["model.embed_tokens.weight"] if head is embedding else head[:vocab].clone()
    return cut


def save_tokenizer(job: TrainJob, target: Path) -> None:
    """The tokenizer (with its chat template) and the stop tokens beside the weights, as serving wants them."""
    tokenizer = load(job.tokenizer_dir)
    tokenizer.save_pretrained(str(target))
    generation_config(job, tokenizer).save_pretrained(str(target))


def generation_config(job: TrainJob, tokenizer) -> GenerationConfig:
    """A fine-tuned model keeps its base's generation config (a published checkpoint's sampling defaults), with
    every end-of-turn token of its template among the eos ids; a model trained from scratch gets solo's."""
    stops = stop_token_ids(tokenizer)
    if job.init_model_dir and (Path(job.init_model_dir) / "generation_config.json").is_file():
        config = GenerationConfig.from_pretrained(job.init_model_dir)
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        config.eos_token_id = list(dict.fromkeys(i for i in [*eos, *stops] if i is not None))
        return config
    return GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, max_new_tokens=256)


def export_adapters(engine, job: TrainJob) -> None:
    output = Path(job.output_dir)
    # peft's own format: adapter_config.json (naming the base) and adapter_model.safetensors.
    engine.module.save_pretrained(str(output / "adapter"))
    save_tokenizer(job, output / "adapter")
    if job.config.merge:
        merge_into_base(job.init_model_dir, output / "adapter", output / "model")
        save_tokenizer(job, output / "model")
