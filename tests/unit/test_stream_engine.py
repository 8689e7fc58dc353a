"""The layer-streaming engine (`engine: stream`, solo.train.stream) on the host, where the device is host memory:
its gradients against a plain PyTorch backward, its losses against DeepSpeed's engine through the same
training loop (one process, gloo), exact resume from its own checkpoints and from DeepSpeed's, and the
optimizer step on a background thread overlapping the next forward without changing a bit."""

import copy
import csv
import functools
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import cpuinfo
import pytest
import torch

from solo.config import load_config
from solo.errors import SoloError
from solo.runtime import worker_env
from solo.train.checkpoints import check_resumable, resume_from
from solo.train.config import FinetuneConfig, TrainConfig
from solo.train.job import TrainJob
from solo.train.loop import train_worker

# As a Ray worker has them, before DeepSpeed first loads: its CPU accelerator, the compiled-op cache.
for key, value in worker_env().items():
    os.environ.setdefault(key, value)


@pytest.fixture(autouse=True)
def cpu_described_once(monkeypatch):
    """DeepSpeedCPUAdam asks py-cpuinfo about the CPU each time one is built (over a second, in subprocesses),
    and these tests build nine; the answer does not change within a run."""
    monkeypatch.setattr(cpuinfo, "get_cpu_info", _cpu_info)


_cpu_info = functools.cache(cpuinfo.get_cpu_info)

# What make_engine hands the stream engine: a resolved strategy, and AdamW (Muon does not run in it).
STREAM = load_config(TrainConfig, None, ["engine=stream", "optim.name=adamw", "optim.schedule=cosine",
                                         "strategy.precision=fp32"])


def tiny_llama():
    """The demo shape cut to two decoder layers, seeded."""
    from transformers import LlamaForCausalLM

    from solo.train.presets import llama_config

    config = llama_config("demo", vocab_size=512, seq_len=32)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def micro_batch(seed: int) -> dict:
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[0, :5] = -100
    # Row 0 packs two sequences (positions restart: a block-diagonal mask); row 1 is one sequence.
    positions = torch.stack([torch.cat([torch.arange(20), torch.arange(12)]), torch.arange(32)])
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}


def test_gradients_equal_a_plain_pytorch_backward():
    from solo.train.stream import StreamEngine

    model = tiny_llama()
    reference = copy.deepcopy(model)
    engine = StreamEngine(model, STREAM, torch.device("cpu"), accumulation=2)
    inputs = micro_batch(1)

    for _ in range(2):  # two micro-batches accumulate, each scaled by 1/2 as DeepSpeed scales them
        out = engine(**inputs)
        engine.backward(out.loss)
        (reference(**inputs).loss / 2).backward()
    ours = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.allclose(ours[name].grad, param.grad, rtol=1e-5, atol=1e-7), name
    engine.eval()
    with torch.no_grad():
        assert torch.allclose(engine(**inputs).loss, reference(**inputs).loss, rtol=1e-6)


def test_optimizer_step_overlaps_the_next_forward_and_changes_no_bit(monkeypatch):
    """Three steps of two micro-batches, the loop's LR schedule set before each step's forward. The overlapped
    engine (the default) against the same engine waiting for each step to finish before going on, and against
    DeepSpeed's own CPU Adam step() over the whole model fed the same gradients: the same losses and weights,
    bit for bit. Its head's update is held until the next forward has reached the first layer, and the order
    of what happened is recorded: each unit's forward came after its own update, and the first layer's before
    the head's update (the overlap)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from solo.train.schedule import learning_rate
    from solo.train.stream import StreamEngine

    config = load_config(TrainConfig, None, ["optim.warmup_steps=2", "max_steps=3", "optim.name=adamw",
                                             "optim.schedule=cosine", "strategy.precision=fp32"])
    model = tiny_llama()
    overlapped = StreamEngine(copy.deepcopy(model), config, torch.device("cpu"), accumulation=2)
    serial = StreamEngine(model, config, torch.device("cpu"), accumulation=2)
    whole = [torch.nn.Parameter(p.detach().clone()) for p in serial.params]
    deepspeed_adam = DeepSpeedCPUAdam(whole, lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                                      weight_decay=config.optim.weight_decay, adamw_mode=True)
    monkeypatch.setattr(overlapped.adam, "CHUNK", 1024)  # parameters in slices: the same bits

    head, log = len(overlapped.units) - 1, []
    next_forward_reached_layer_0 = threading.Event()
    update_unit = overlapped.adam._update_unit

    def recorded_update(k, settings):
        if k == 0:
            next_forward_reached_layer_0.clear()
        if k == head:  # held until the next forward reaches layer 0: an engine whose forward waited for the
            # whole step would time out here, then fail the order checks below
            next_forward_reached_layer_0.wait(timeout=60)
        update_unit(k, settings)
        log.append(("updated", k))

    monkeypatch.setattr(overlapped.adam, "_update_unit", recorded_update)

    def record_forward(k):
        def hook(module, args):
            if not torch.is_grad_enabled():  # forward; backward recomputes a layer with grad enabled
                log.append(("forward", k))
                if k == 1:
                    next_forward_reached_layer_0.set()
        return hook

    modules = [overlapped.module.model.embed_tokens, *overlapped.module.model.layers]
    for k, module in enumerate(modules):
        module.register_forward_pre_hook(record_forward(k))

    for step in range(3):
        for optimizer in (overlapped.optimizer, serial.optimizer, deepspeed_adam):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)  # as the loop does; the overlapped step is in flight
        for micro in range(2):
            inputs = micro_batch(10 * step + micro)
            losses = []
            for engine in (overlapped, serial):
                out = engine(**inputs)
                engine.backward(out.loss)
                losses.append(out.loss)
            assert torch.equal(*losses), (step, micro)
            if micro == 1:  # the global batch's gradients, clipped as the engine does, to DeepSpeed's step()
                factor = max(1.0, (serial.grads.norm().item() + 1e-6) / config.optim.grad_clip)
                for param, source in zip(whole, serial.params):
                    param.grad = source.grad.clone().div_(factor) if factor > 1 else source.grad.clone()
                deepspeed_adam.step()
            overlapped.step()
            serial.step()
            serial._finish_pending_step()
    assert torch.equal(overlapped(**micro_batch(99)).loss, serial(**micro_batch(99)).loss)  # releases the last head

    for a, b, c in zip(overlapped.module.parameters(), serial.module.parameters(), whole):
        assert torch.equal(a, b) and torch.equal(b, c)
    print(log)
    for k in range(len(modules)):
        forwards = [i for i, event in enumerate(log) if event == ("forward", k)]
        assert len(forwards) == 7  # two micro-batches a step, and the last forward
        for n, at in enumerate(forwards):  # step n // 2's forwards come after the unit's n // 2 updates, not more
            assert log[:at].count(("updated", k)) == n // 2, (k, n)
    layer_0 = [i for i, event in enumerate(log) if event == ("forward", 1)]
    for step in (1, 2, 3):  # each step's first forward ran layer 0 while the head still had the step before to go
        assert log[:layer_0[2 * step]].count(("updated", head)) == step - 1, step


def test_an_error_in_the_background_optimizer_step_is_raised_in_the_training_thread(monkeypatch):
    from solo.train.stream import StreamEngine

    engine = StreamEngine(tiny_llama(), STREAM, torch.device("cpu"), accumulation=1)

    def broken_update(*args):
        raise RuntimeError("the CPU Adam kernel failed")

    monkeypatch.setattr(engine.optimizer, "ds_opt_adam", SimpleNamespace(adam_update=broken_update))
    out = engine(**micro_batch(1))
    engine.backward(out.loss)
    engine.step()  # returns: the update runs on the background thread
    with pytest.raises(RuntimeError, match="the CPU Adam kernel failed"):
        engine(**micro_batch(2))  # waits for the embedding's update
    with pytest.raises(RuntimeError, match="the CPU Adam kernel failed"):
        _ = engine.module  # and whatever reads the weights, again


def token_rows(tokenizer_dir: Path, folder: Path) -> Path:
    from solo.data import corpus
    from solo.tokens.shards import ShardWriter, pack, token_dtype
    from solo.tokens.tokenizer import load

    tokenizer = load(tokenizer_dir)
    documents = [tokenizer.encode(d["text"]) for d in corpus.documents(max_documents=12)]
    rows, _ = pack(documents, tokenizer.eos_token_id, 32, token_dtype(len(tokenizer)))
    for split, part in (("train", rows[:-8]), ("val", rows[-8:])):
        writer = ShardWriter(folder / split, 32, token_dtype(len(tokenizer)), rows_per_shard=10_000)
        for row in part:
            writer.add(row)
        writer.close()
    return folder


def logged_losses(output: Path) -> dict[int, float]:
    with (output / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def exported(output: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(output / "model" / "model.safetensors")


def test_stream_engine_matches_deepspeed_and_resumes_exactly(tmp_path, tiny_model_dir, gloo_group,
                                                            picked_sink):
    rows = token_rows(tiny_model_dir, tmp_path / "tokens")

    def run(name: str, engine: str, resume_from: Path | None = None) -> Path:
        # Two micro-batches per step (accumulation), validation at step 3, a checkpoint every 3 steps;
        # DeepSpeed at ZeRO-3 with the optimizer and the parameters offloaded to CPU, AdamW on both sides.
        # Both start from the same saved weights: ZeRO-3 initializes a new model inside its partitions,
        # which draws other random numbers than a whole model does from the same seed.
        config = load_config(TrainConfig, None, [
            f"engine={engine}", "workers=1", "micro_batch=2", "global_batch=4", "max_steps=6", "log_every=1",
            "eval_every=3", "eval_batches=2", "checkpoint_every=3", "optim.warmup_steps=2", "optim.name=adamw",
            "optim.schedule=cosine", "strategy.zero_stage=3", "strategy.offload_optimizer=cpu",
            "strategy.offload_params=cpu"])
        output = tmp_path / name
        output.mkdir()
        job = TrainJob(config=config, train_dir=str(rows / "train"), val_dir=str(rows / "val"),
                       tokenizer_dir=str(tiny_model_dir), output_dir=str(output), init_model_dir=str(tiny_model_dir))
        train_worker(job, picked_sink(tmp_path / f"{name}-checkpoints", resume_from))
        return output

    deepspeed_run, stream_run = run("deepspeed", "deepspeed"), run("stream", "stream")
    ds_losses, stream_losses = logged_losses(deepspeed_run), logged_losses(stream_run)
    print("deepspeed", ds_losses, "\nstream", stream_losses)
    assert list(stream_losses) == list(range(1, 7))
    assert stream_losses == pytest.approx(ds_losses, abs=2e-4)
    assert stream_losses[6] < stream_losses[1] - 0.1  # it learns
    ds_weights, stream_weights = exported(deepspeed_run), exported(stream_run)
    assert ds_weights.keys() == stream_weights.keys()
    differences = torch.cat([(stream_weights[k] - ds_weights[k]).abs().flatten() for k in ds_weights])
    print("largest weight difference", differences.max().item(), "above 1e-4:", int((differences > 1e-4).sum()))
    # Adam divides by the root of a gradient's second moment, so a weight whose gradient is all but zero
    # can take another step on a last-bit difference in it (the engines sum in other orders; one weight
    # of 1.77M moved 1.4e-4 apart with the packages of 2026-12): all but a few agree to 1e-4, and none
    # is more than one step (the peak learning rate) apart.
    assert (differences > 1e-4).sum() <= differences.numel() * 1e-5
    assert differences.max() <= STREAM.optim.lr

    # From its own step-3 checkpoint: the same steps 4–6, bit for bit.
    resumed = run("resumed", "stream", resume_from=tmp_path / "stream-checkpoints" / "step_3")
    assert logged_losses(resumed) == {s: stream_losses[s] for s in (4, 5, 6)}
    resumed_weights = exported(resumed)
    assert all(torch.equal(resumed_weights[k], stream_weights[k]) for k in stream_weights)

    # From DeepSpeed's step-3 ZeRO-3 checkpoint: its weights, step, loader position and Adam's moments carry
    # over, so the switched run goes on as DeepSpeed's own did.
    switched = run("switched", "stream", resume_from=tmp_path / "deepspeed-checkpoints" / "step_3")
    print("switched", logged_losses(switched))
    assert logged_losses(switched) == pytest.approx({s: ds_losses[s] for s in (4, 5, 6)}, abs=2e-4)

    # The other way round is refused, saying what to do.
    with pytest.raises(SoloError, match="written by engine: stream.*--set engine=stream"):
        check_resumable(resume_from(tmp_path / "stream-checkpoints" / "step_3"), "deepspeed")


def test_stream_engine_is_for_full_weight_training():
    assert load_config(FinetuneConfig, None, ["engine=stream"]).method == "sft"
    with pytest.raises(SoloError, match="engine: stream trains every weight"):
        load_config(FinetuneConfig, None, ["engine=stream", "method=qlora"])
    with pytest.raises(SoloError, match="fp32 or bf16"):
        load_config(TrainConfig, None, ["engine=stream", "strategy.precision=fp16", "optim.name=adamw"])
