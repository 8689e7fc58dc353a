"""The layer-streaming engine (`engine: stream`, solo.stream) on the host, where the device is host memory:
its gradients against a plain PyTorch backward, its losses against DeepSpeed's engine through the same
training loop (one process, gloo), and exact resume from its own checkpoints and from DeepSpeed's."""

import copy
import csv
import os
from pathlib import Path

import pytest
import torch

from solo.runtime import worker_env

for key, value in worker_env().items():
    os.environ.setdefault(key, value)

from solo.config import FinetuneConfig, TrainConfig, load_config  # noqa: E402
from solo.errors import SoloError  # noqa: E402
from solo.checkpoints import check_resumable  # noqa: E402
from solo.train import TrainJob, train_worker  # noqa: E402


def test_gradients_equal_a_plain_pytorch_backward():
    from transformers import LlamaForCausalLM

    from solo.model import llama_config
    from solo.stream import StreamEngine

    config = llama_config("demo", vocab_size=512, seq_len=32)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    reference = copy.deepcopy(model)
    engine = StreamEngine(model, TrainConfig(), torch.device("cpu"), accumulation=2)
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100
    # Row 0 packs two sequences (positions restart: a block-diagonal mask); row 1 is one sequence.
    positions = torch.stack([torch.cat([torch.arange(20), torch.arange(12)]), torch.arange(32)])
    inputs = {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}

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


def token_rows(tokenizer_dir: Path, folder: Path) -> Path:
    from solo import corpus
    from solo.tokenizer import load
    from solo.tokens import ShardWriter, pack, token_dtype

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
        # DeepSpeed as TrainConfig's defaults set it: ZeRO-3, optimizer and parameters offloaded to CPU.
        # Both start from the same saved weights: ZeRO-3 initializes a new model inside its partitions,
        # which draws other random numbers than a whole model does from the same seed.
        config = load_config(TrainConfig, None, [
            f"engine={engine}", "workers=1", "micro_batch=2", "global_batch=4", "max_steps=6", "log_every=1",
            "eval_every=3", "eval_batches=2", "checkpoint_every=3", "optim.warmup_steps=2"])
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
    print("largest weight difference", max((stream_weights[k] - ds_weights[k]).abs().max().item() for k in ds_weights))
    assert all(torch.allclose(stream_weights[k], ds_weights[k], atol=1e-4) for k in ds_weights)

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
        check_resumable(tmp_path / "stream-checkpoints" / "step_3", "deepspeed")


def test_stream_engine_is_for_full_weight_training():
    assert load_config(FinetuneConfig, None, ["engine=stream"]).method == "sft"
    with pytest.raises(SoloError, match="engine: stream trains every weight"):
        load_config(FinetuneConfig, None, ["engine=stream", "method=qlora"])
    with pytest.raises(SoloError, match="fp32 or bf16"):
        load_config(TrainConfig, None, ["engine=stream", "strategy.precision=fp16"])
