"""The training loop's fast path on the CPU, through `solo.train.loop.train_worker` in this process (gloo, one
rank): the `loop:` switches on give the losses and weights of every switch off, and a compiled engine is asked
for where `loop.compile` says; prefetching hands out the same
steps and checkpoints the same loader positions; a padded vocabulary trains and is saved as the tokenizer's; a
recipe's seq_len and vocab_size are checked against the run's rows and tokenizer."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from solo.config import load_config
from solo.errors import SoloError
from solo.runtime import worker_env
from solo.tokens.shards import ShardLoader, TokenShards
from solo.tokens.tokenizer import load
from solo.train.batches import StepBatches
from solo.train.config import TrainConfig
from solo.train.fast_path import optimizer_threads, resolve_switches
from solo.train.job import TrainJob
from solo.train.loop import train_worker

for key, value in worker_env().items():  # as a Ray worker has them, before DeepSpeed first loads
    os.environ.setdefault(key, value)

SMALL = ["workers=1", "micro_batch=4", "global_batch=8", "max_steps=4", "log_every=1", "eval_every=4",
         "eval_batches=1", "checkpoint_every=100", "optim.name=adamw", "optim.schedule=cosine",
         "optim.warmup_steps=1", "strategy.zero_stage=0", "strategy.precision=fp32"]


def train(tmp_path: Path, tokens: Path, name: str, sets: list[str], sink) -> Path:
    config = load_config(TrainConfig, None, [*SMALL, *sets])
    output = tmp_path / name
    output.mkdir()
    job = TrainJob(config=config, train_dir=str(tokens / "tokenize" / "train"),
                   val_dir=str(tokens / "tokenize" / "val"), tokenizer_dir=str(tokens / "tokenizer"),
                   output_dir=str(output))
    job.check()
    train_worker(job, sink(tmp_path / f"{name}-checkpoints"))
    return output


def losses(output: Path) -> list[float]:
    with (output / "metrics.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_every_switch_on_trains_as_every_switch_off(tmp_path, tiny_tokens, gloo_group, picked_sink):
    """The chunked cross-entropy in chunks smaller than a micro-batch, the next step prefetched on a thread and
    torch's fused AdamW: the same losses and weights as the plain loop. (Compiling is held to eager by
    tests/unit/test_loop_switches.py, on the same model code; here, that the loop asks DeepSpeed for it.)"""
    on = ["loop.compile=false", "loop.loss=chunked", "loop.loss_chunk_tokens=100", "loop.prefetch=true",
          "loop.fused_adamw=true"]
    off = ["loop.compile=false", "loop.loss=plain", "loop.prefetch=false", "loop.fused_adamw=false"]
    fast, plain = (train(tmp_path, tiny_tokens, name, sets, picked_sink)
                   for name, sets in (("fast", on), ("plain", off)))
    print("fast", losses(fast), "\nplain", losses(plain))
    assert len(losses(fast)) == 4
    assert losses(fast) == pytest.approx(losses(plain), abs=1e-4)
    fast_weights, plain_weights = (load_file(o / "model" / "model.safetensors") for o in (fast, plain))
    assert fast_weights.keys() == plain_weights.keys()
    for name in plain_weights:
        torch.testing.assert_close(fast_weights[name], plain_weights[name], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("compiled", [True, False])
def test_the_engine_is_compiled_when_loop_compile_says_so(compiled, tmp_path, tiny_tokens, gloo_group, monkeypatch):
    """DeepSpeed's own `engine.compile()` (the module's forward, compiled in place) is what the loop asks for; a
    recorder stands in for it here, since compiling costs CI its minutes and test_loop_switches.py compiles."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    from solo.train.engines import make_engine

    calls = []
    monkeypatch.setattr(DeepSpeedEngine, "compile", lambda engine, **kwargs: calls.append(engine))
    config = load_config(TrainConfig, None, [*SMALL, f"loop.compile={str(compiled).lower()}"])
    job = TrainJob(config=config, train_dir=str(tiny_tokens / "tokenize" / "train"), val_dir=None,
                   tokenizer_dir=str(tiny_tokens / "tokenizer"), output_dir=str(tmp_path))
    engine, _, _, switches, _ = make_engine(job, 1, torch.device("cpu"))
    assert switches.compile is compiled and calls == ([engine] if compiled else [])


def test_auto_switches_on_the_cpu_and_on_cuda():
    """auto turns every switch on on CUDA where the strategy lets it, and on the CPU keeps what measured faster
    there; a switch asked for where it cannot run is refused in one line naming it."""
    adamw = load_config(TrainConfig, None, ["optim.name=adamw", "strategy.zero_stage=0"])
    on_gpu = resolve_switches(adamw, cuda=True)
    assert (on_gpu.compile, on_gpu.loss in ("chunked", "fused"), on_gpu.prefetch, on_gpu.fused_adamw) == (
        True, True, True, True)
    on_cpu = resolve_switches(adamw, cuda=False)
    assert on_cpu.compile is False
    zero3 = load_config(TrainConfig, None, ["optim.name=adamw", "strategy.zero_stage=3",
                                            "strategy.offload_optimizer=cpu"])
    at_zero3 = resolve_switches(zero3, cuda=True)
    assert (at_zero3.compile, at_zero3.loss, at_zero3.fused_adamw) == (False, "plain", False)
    with pytest.raises(SoloError, match="loop.compile: true runs at zero_stage 0-2"):
        resolve_switches(zero3.model_copy(update={"loop": zero3.loop.model_copy(update={"compile": True})}), True)
    with pytest.raises(SoloError, match="loop.fused_adamw: true needs optim.name: adamw"):
        resolve_switches(zero3.model_copy(update={"loop": zero3.loop.model_copy(update={"fused_adamw": True})}), True)
    with pytest.raises(SoloError, match="loop.loss: chunked needs"):
        resolve_switches(adamw.model_copy(update={"loop": adamw.loop.model_copy(update={"loss": "chunked"})}), True,
                         llama_like=False)


def test_host_cores_go_to_a_worker_whose_optimizer_runs_on_the_host():
    offload = load_config(TrainConfig, None, ["optim.name=adamw", "workers=2", "strategy.zero_stage=2",
                                              "strategy.offload_optimizer=cpu"])
    stream = load_config(TrainConfig, None, ["optim.name=adamw", "workers=1", "engine=stream"])
    on_device = load_config(TrainConfig, None, ["optim.name=adamw", "workers=1", "strategy.zero_stage=0"])
    assert optimizer_threads(offload, host_cores=16) == 8
    assert optimizer_threads(stream, host_cores=16) == 16
    assert optimizer_threads(on_device, host_cores=16) == 1


def test_prefetching_hands_out_the_same_steps_and_loader_states(tiny_tokens):
    shards = TokenShards(tiny_tokens / "tokenize" / "train")

    def steps(prefetch: bool, count: int = 7):
        batches = StepBatches(ShardLoader(shards, 0, 1, 3, seed=5), 2, torch.device("cpu"), prefetch)
        taken = [batches.next() for _ in range(count)]
        batches.close()
        return taken

    ahead, in_step = steps(True), steps(False)
    for a, b in zip(ahead, in_step):
        assert vars(a.loader_state) == vars(b.loader_state)
        for x, y in zip(a.micro_batches, b.micro_batches):
            assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    # The state recorded with a step is the loader's after that step's rows, not after what was read ahead.
    assert [s.loader_state.position for s in in_step[:2]] == [6, 12]


def test_a_padded_vocabulary_trains_and_is_saved_as_the_tokenizers(tmp_path, tiny_tokens, gloo_group, picked_sink):
    vocab = len(load(tiny_tokens / "tokenizer"))
    output = train(tmp_path, tiny_tokens, "padded", ["model=demo", "vocab_multiple=100"], picked_sink)
    assert losses(output)[-1] < losses(output)[0]
    saved = AutoModelForCausalLM.from_pretrained(output / "model")
    assert saved.config.vocab_size == vocab and saved.get_input_embeddings().weight.shape[0] == vocab
    assert saved.lm_head.weight.data_ptr() == saved.get_input_embeddings().weight.data_ptr()  # still tied
    ids = torch.from_numpy(np.asarray(TokenShards(tiny_tokens / "tokenize" / "val").rows(np.arange(2))[0]))
    assert saved(ids).logits.shape[-1] == vocab


def test_a_recipes_rows_and_tokenizer_are_checked(tmp_path, tiny_tokens):
    def job(sets: list[str]) -> TrainJob:
        return TrainJob(config=load_config(TrainConfig, None, [*SMALL, *sets]),
                        train_dir=str(tiny_tokens / "tokenize" / "train"), val_dir=None,
                        tokenizer_dir=str(tiny_tokens / "tokenizer"), output_dir=str(tmp_path))

    job(["seq_len=64", f"vocab_size={len(load(tiny_tokens / 'tokenizer'))}"]).check()
    with pytest.raises(SoloError, match=r"rows of 1024 tokens \(seq_len\) but the tokenize stage made rows of 64: "
                                        r"run it again with --set seq_len=1024"):
        job(["seq_len=1024"]).check()
    with pytest.raises(SoloError, match=r"a tokenizer of 32,000 tokens \(vocab_size\) but the run's has"):
        job(["vocab_size=32000"]).check()
