"""The layer-streaming engine (`engine: stream`, solo.train.stream) on the host, where the device is host memory:
its gradients against a plain PyTorch backward over a step's micro-batches, each layer's weights fetched once for
forward and once for backward a step, its losses against DeepSpeed's engine through the same training loop (one
process, gloo), exact resume from its own checkpoints and from DeepSpeed's, and the optimizer step on a background
thread overlapping the next forward without changing a bit."""

import copy
import csv
import dataclasses
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
from solo.train.fast_path import resolve_switches
from solo.train.job import TrainJob
from solo.train.loop import train_worker
from solo.train.stream import host_bytes_per_parameter
from solo.train.stream_transfers import DeviceStreams, pinned_blocks

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


def stream_engine(model, config: TrainConfig = STREAM, accumulation: int = 3, **switches):
    """The engine as make_engine builds it on a CPU: the switches `auto` resolves to there, `switches` overriding."""
    from solo.train.stream import StreamEngine

    resolved = dataclasses.replace(resolve_switches(config, cuda=False), **switches)
    return StreamEngine(model, config, torch.device("cpu"), accumulation, resolved)


def held_gradients(engine) -> list:
    """Keeps the step's optimizer update from running, so each parameter's .grad keeps the step's gradient;
    returns the gradient norms' divisors the update would have been given."""
    divisors = []
    engine.adam.start = divisors.append
    return divisors


@pytest.mark.parametrize("loss, precision", [("plain", "fp32"), ("chunked", "fp32"), ("plain", "bf16")])
def test_gradients_equal_a_plain_pytorch_backward(loss, precision):
    """One optimizer step of three micro-batches: the engine's summed gradients and losses against transformers'
    model run forward and backward on each micro-batch, its loss scaled by 1/3 as DeepSpeed scales it. With the
    chunked loss (chunks smaller than a micro-batch) they equal it too; in bf16 (weights cast from the fp32
    master, as the engine computes) within bf16's precision."""
    config = load_config(TrainConfig, None, ["engine=stream", "optim.name=adamw", f"strategy.precision={precision}"])
    model = tiny_llama()
    reference = copy.deepcopy(model)
    if precision == "bf16":
        reference = reference.to(torch.bfloat16)
    engine = stream_engine(model, config, loss=loss, loss_chunk_tokens=24)
    held_gradients(engine)
    batches = [micro_batch(seed) for seed in (1, 2, 3)]

    losses = engine.train_step(batches)
    reference_losses = 0.0
    for inputs in batches:
        out = reference(**inputs)
        (out.loss / 3).backward()
        reference_losses += out.loss.detach().float()
    assert losses.shape == () and not losses.requires_grad
    assert torch.allclose(losses, reference_losses, rtol=1e-6 if precision == "fp32" else 1e-2)
    ours = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        if precision == "fp32":
            assert torch.allclose(ours[name].grad, param.grad, rtol=1e-5, atol=1e-7), name
        else:  # the reference sums its bf16 gradients in bf16, the engine in fp32: within bf16's precision
            assert (ours[name].grad - param.grad.float()).norm() <= 2e-2 * param.grad.float().norm(), name
    engine.eval()
    if precision == "fp32":  # evaluation: a micro-batch at a time, no gradients
        with torch.no_grad():
            assert torch.allclose(engine(**batches[0]).loss, reference(**batches[0]).loss, rtol=1e-6)


def test_each_layer_is_fetched_once_for_forward_and_once_for_backward_a_step():
    """Accumulation 3: every decoder layer's weights come to the device twice per optimizer step, not six times;
    the embedding and the head stay on the device and are never fetched. Evaluation fetches each layer once."""
    engine = stream_engine(tiny_llama(), accumulation=3)
    engine.train_step([micro_batch(seed) for seed in (1, 2, 3)])
    assert {engine.layers.index(unit): n for unit, n in engine.weights.fetches.items()} == {0: 2, 1: 2}
    engine.train_step([micro_batch(seed) for seed in (4, 5, 6)])
    assert list(engine.weights.fetches.values()) == [4, 4]
    engine.eval()
    with torch.no_grad():
        engine(**micro_batch(7))
    assert list(engine.weights.fetches.values()) == [5, 5]
    assert engine.embedding not in engine.weights.fetches and engine.head not in engine.weights.fetches


def test_the_device_path_run_on_the_host_gives_the_same_gradients(monkeypatch):
    """What a GPU run does besides computing, run on the host: layers copied into the two slots, the resident
    units into their own device buffers, gradients through the staging slots, and boundary activations past a
    budget of three copied out and back, into host buffers the next step reuses. Two steps (their optimizer
    updates held back, so their gradients add up): the losses and gradients equal those of the engine that
    copies nothing, bit for bit."""
    config = load_config(TrainConfig, None, ["engine=stream", "optim.name=adamw", "strategy.precision=fp32"])
    batches = [micro_batch(seed) for seed in (1, 2, 3)]
    plain = stream_engine(tiny_llama(), config)
    held_gradients(plain)
    plain_losses = plain.train_step(batches)

    host_init = DeviceStreams.__init__

    def copying_init(self, device):
        host_init(self, device)
        self.host_is_device = False  # copy as a GPU would, into host tensors standing in for device ones

    monkeypatch.setattr(DeviceStreams, "__init__", copying_init)
    engine = stream_engine(tiny_llama(), config)
    boundary_bytes = batches[0]["input_ids"].numel() * engine._model.config.hidden_size * 4
    engine.boundaries.budget_bytes = 3 * boundary_bytes  # 3 of the step's 6 boundaries stay, 3 go out and back
    moved_out = []
    put = engine.boundaries.put

    def counted_put(key, tensor):
        put(key, tensor)
        if key in engine.boundaries.on_host:
            moved_out.append(key)

    engine.boundaries.put = counted_put
    held_gradients(engine)
    assert all(slot.numel() for slot in engine.weights.slots) and all(s.numel() for s in engine.gradients.staging)
    assert torch.equal(engine.train_step(batches), plain_losses)
    assert moved_out == [(1, 0), (1, 1), (1, 2)]  # layer 1's inputs, past the budget
    assert not (engine.boundaries.on_device or engine.boundaries.on_host or engine.boundaries.coming)
    pinned = engine.boundaries.pinned
    assert engine.train_step(batches[::-1]) == plain.train_step(batches[::-1])  # its gradients add to the first's
    assert engine.boundaries.pinned == pinned  # the second step reused the host buffers of the first
    for ours, theirs in zip(engine.params, plain.params):
        assert torch.equal(ours.grad, theirs.grad)
    assert list(engine.weights.fetches.values()) == [4, 4]
    engine.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(engine(**batches[0]).loss, plain(**batches[0]).loss)


def test_bf16_weights_go_to_the_device_from_packed_copies_of_the_master():
    """Under bf16 every unit keeps a bf16 copy of its fp32 master, refreshed by the optimizer thread after each
    update: after a step it is the updated master, cast."""
    config = load_config(TrainConfig, None, ["engine=stream", "optim.name=adamw", "strategy.precision=bf16"])
    engine = stream_engine(tiny_llama(), config, accumulation=1)
    before = [unit.packed.clone() for unit in engine.units]
    engine.train_step([micro_batch(1)])
    _ = engine.module  # waits for the step in flight
    for unit, old in zip(engine.units, before):
        assert unit.packed.dtype == torch.bfloat16 and torch.equal(unit.packed, unit.master.bfloat16())
        assert not torch.equal(unit.packed, old)  # it was updated, and so was the copy
    assert host_bytes_per_parameter("bf16") == host_bytes_per_parameter("fp32") + 2 == 18


def test_pinned_buffers_are_cut_from_few_power_of_two_blocks():
    """The host buffers of 2.7b (32 layers of 69.5M parameters, a 32k × 2560 embedding) laid out in pinned blocks:
    each buffer whole inside one block, none overlapping, every block a power of two (what PyTorch's caching host
    allocator takes anyway), and under half a byte a parameter lost for each, where a pinned buffer per unit
    loses 3.6 (fp32 masters) and 1.8 (bf16 copies)."""
    units = [32768 * 2560] + [69_480_960] * 32 + [2560]
    for element in (4, 2):  # the fp32 masters, then the bf16 packed copies
        sizes = [element * n for n in units]
        plan = pinned_blocks(sizes)
        placed = [(offset, block) for block, (_, offsets) in enumerate(plan) for offset in offsets]
        assert len(placed) == len(sizes)
        for block_bytes, _ in plan:
            assert block_bytes & (block_bytes - 1) == 0
        for (offset, block), size, (next_offset, next_block) in zip(placed, sizes, [*placed[1:], (None, None)]):
            assert offset + size <= plan[block][0]
            assert next_block != block or next_offset >= offset + size
        lost = sum(block for block, _ in plan) - sum(sizes)
        assert lost <= 0.5 * sum(units), element  # bytes: half a byte a parameter


def test_an_eager_cpu_run_never_calls_torch_compile(monkeypatch):
    """On the CPU the layer compute stays eager, even where loop.compile was asked for."""
    def refused(*args, **kwargs):
        raise AssertionError("torch.compile called on the CPU")

    monkeypatch.setattr(torch, "compile", refused)
    for compile_asked in (False, True):
        engine = stream_engine(tiny_llama(), accumulation=1, compile=compile_asked)
        engine.train_step([micro_batch(1)])
        engine.eval()
        with torch.no_grad():
            engine(**micro_batch(2))


def test_optimizer_step_overlaps_the_next_forward_and_changes_no_bit(monkeypatch):
    """Three steps of two micro-batches, the loop's LR schedule set before each step. The overlapped engine (the
    default) against the same engine waiting for each step to finish before going on, and against DeepSpeed's
    own CPU Adam step() over the whole model fed the same gradients: the same losses and weights, bit for bit.
    Its head's update is held until the next forward has reached the first layer, and the order of what
    happened is recorded: each unit's forward came after its own update, and the first layer's before the
    head's update (the overlap)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from solo.train.schedule import learning_rate

    config = load_config(TrainConfig, None, ["optim.warmup_steps=2", "max_steps=3", "optim.name=adamw",
                                             "optim.schedule=cosine", "strategy.precision=fp32", "engine=stream"])
    model = tiny_llama()
    overlapped = stream_engine(copy.deepcopy(model), config, accumulation=2)
    serial = stream_engine(model, config, accumulation=2)
    whole = [torch.nn.Parameter(p.detach().clone()) for p in serial.params]
    deepspeed_adam = DeepSpeedCPUAdam(whole, lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                                      weight_decay=config.optim.weight_decay, adamw_mode=True)
    monkeypatch.setattr(overlapped.adam, "CHUNK", 1024)  # parameters in slices: the same bits
    serial_start, step_gradients = serial.adam.start, []

    def start_recorded(grad_divisor):  # the global batch's gradients, clipped as the engine does
        step_gradients.append([p.grad.clone().div_(grad_divisor) for p in serial.params])
        serial_start(grad_divisor)

    monkeypatch.setattr(serial.adam, "start", start_recorded)

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
        batches = [micro_batch(10 * step + micro) for micro in range(2)]
        assert torch.equal(overlapped.train_step(batches), serial.train_step(batches)), step
        serial._finish_pending_step()
        for param, grad in zip(whole, step_gradients[-1]):
            param.grad = grad
        deepspeed_adam.step()
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
    engine = stream_engine(tiny_llama(), accumulation=1)

    def broken_update(*args):
        raise RuntimeError("the CPU Adam kernel failed")

    monkeypatch.setattr(engine.optimizer, "ds_opt_adam", SimpleNamespace(adam_update=broken_update))
    engine.train_step([micro_batch(1)])  # returns: the update runs on the background thread
    with pytest.raises(RuntimeError, match="the CPU Adam kernel failed"):
        engine.train_step([micro_batch(2)])  # waits for the embedding's update
    with pytest.raises(RuntimeError, match="the CPU Adam kernel failed"):
        _ = engine.module  # and whatever reads the weights, again


def test_train_step_takes_the_steps_micro_batches():
    engine = stream_engine(tiny_llama(), accumulation=2)
    with pytest.raises(ValueError, match="2 micro-batches, not 1"):
        engine.train_step([micro_batch(1)])


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
