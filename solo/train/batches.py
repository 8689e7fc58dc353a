"""A training step's micro-batches on the device. With `loop.prefetch` the next step's rows are read, pinned and
copied to the GPU on a side stream while this step computes, so the GPU never waits on the host for its input;
without it they are read and copied when the step asks. Both hand out the same rows in the same order."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from solo.tokens.shards import LoaderState, ShardLoader, TokenShards


@dataclass
class Step:
    """One optimizer step's input: each micro-batch's model keyword arguments, on the device, and the loader's
    state after them (what a checkpoint taken at the end of this step must record, whatever was read ahead)."""

    micro_batches: list[dict]
    loader_state: LoaderState


def model_inputs(shards: TokenShards, indices: np.ndarray, device: torch.device, pin: bool = False) -> dict:
    """The model's keyword arguments for these rows: position ids too where rows are packed conversations (they
    are what keeps one conversation from attending to another; see solo.train.sft). `pin`: stage the rows in
    page-locked memory and copy them without blocking (the caller orders the copy against its compute)."""
    input_ids, labels = shards.rows(indices)

    def to_device(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.pin_memory().to(device, non_blocking=True) if pin else tensor.to(device)

    # No KV cache: with one, transformers skips its packed-sequence detection and the position
    # restarts would no longer separate conversations (and training never reads a cache anyway).
    inputs = {"input_ids": to_device(input_ids), "labels": to_device(labels), "use_cache": False}
    positions = shards.positions(indices)
    if positions is not None:
        inputs["position_ids"] = to_device(positions)
    return inputs


class StepBatches:
    """Steps of `accumulation` micro-batches from `loader`, in its order. With `prefetch`, a background thread
    prepares step k+1 (reading the rows; on CUDA pinning them and copying them on a copy stream) once step k is
    handed out; `next()` makes the compute stream wait for that copy, not the host."""

    def __init__(self, loader: ShardLoader, accumulation: int, device: torch.device, prefetch: bool):
        self.loader, self.accumulation, self.device, self.prefetch = loader, accumulation, device, prefetch
        self.indices = loader.indices()
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if prefetch and self.cuda else None
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") if prefetch else None
        self.pending: Future | None = None

    def _read(self) -> tuple[Step, torch.cuda.Event | None]:
        micro_batches = [next(self.indices) for _ in range(self.accumulation)]
        state = LoaderState(**vars(self.loader.state))
        if self.copy_stream is None:
            return Step([model_inputs(self.loader.shards, i, self.device) for i in micro_batches], state), None
        with torch.cuda.stream(self.copy_stream):
            step = Step([model_inputs(self.loader.shards, i, self.device, pin=True) for i in micro_batches], state)
            copied = torch.cuda.Event()
            copied.record(self.copy_stream)
        return step, copied

    def next(self) -> Step:
        if self.reader is None:
            return self._read()[0]
        step, copied = (self.pending or self.reader.submit(self._read)).result()
        if copied is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copied)
            for inputs in step.micro_batches:
                for value in inputs.values():
                    if isinstance(value, torch.Tensor):
                        # Allocated on the copy stream, read on the compute one: keep the memory until it is done.
                        value.record_stream(compute)
        self.pending = self.reader.submit(self._read)
        return step

    def close(self) -> None:
        if self.reader is not None:
            self.reader.shutdown(wait=True, cancel_futures=True)
