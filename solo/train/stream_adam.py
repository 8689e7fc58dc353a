"""The stream engine's optimizer step: DeepSpeed's CPU Adam over the host master weights, a unit at a time on
a background thread, so the next step's forward overlaps it."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from solo.train.stream_transfers import Unit


@dataclass(frozen=True)
class AdamSettings:
    """One optimizer step's settings, taken when the step starts: the loop sets the next step's learning
    rate on the param group while this step's last units may still be updating."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    bias_correction: bool
    grad_divisor: float  # the global clipping factor, 1 when the norm is within the limit


class OverlappedAdam:
    """DeepSpeed's CPU Adam (AdamW) stepping the host master weights a unit at a time, in forward order,
    on one background thread, so the next step's forward can compute its first units while the last ones
    still update (`WeightStream` waits for a unit's update before fetching it). Right after a unit's update
    the thread refreshes its packed compute-dtype copy (`Unit.repack`), which is what the device receives.

    Each parameter gets what DeepSpeedCPUAdam.step() gives it (the same `adam_update` kernel, state and
    step count), so the weights are bit for bit those of one `step()` over the whole model, and the
    optimizer keeps its single param group and its state_dict (checkpoints are unchanged). A tied weight
    is updated with the first unit that uses it (the embedding). DeepSpeed's binding of `adam_update`
    holds the GIL while it runs, so a parameter goes through it in slices of CHUNK elements: the training
    thread, wanting the GIL back to issue its next operation, waits for one slice, not a whole embedding.
    An error on the thread is raised in the training thread by whatever waits for that unit or a later one.
    """

    # A multiple of every SIMD width × unroll the kernel uses (at most 512 floats), so each element takes
    # the vector or scalar path it would take in one call over the whole tensor: the same bits. ~4 M
    # elements is a few milliseconds of a server CPU.
    CHUNK = 1 << 22

    def __init__(self, optimizer, units: list[Unit]):
        self.optimizer = optimizer
        self.units = units
        self.position = {id(unit): k for k, unit in enumerate(units)}
        self.owned: list[list[nn.Parameter]] = [unit.owned for unit in units]  # laid out by stream_transfers.lay_out
        if {id(p) for owned in self.owned for p in owned} != {id(p) for p in optimizer.param_groups[0]["params"]}:
            raise RuntimeError("the streamed units must hold exactly the parameters the optimizer steps")
        self.pending: list[Future] = []  # one per unit, in forward order, while a step is in flight
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="solo-stream-adam")

    def start(self, grad_divisor: float) -> None:
        """Steps every unit on the background thread with the param group's current settings."""
        self.finish()
        group = self.optimizer.param_groups[0]
        settings = AdamSettings(lr=group["lr"], betas=tuple(group["betas"]), eps=group["eps"],
                                weight_decay=group["weight_decay"], bias_correction=group["bias_correction"],
                                grad_divisor=grad_divisor)
        self.pending = [Future() for _ in self.owned]
        self.worker.submit(self._run, settings, self.pending)

    def done(self, unit: Unit) -> bool:
        return not self.pending or self.pending[self.position[id(unit)]].done()

    def wait(self, unit: Unit) -> None:
        """Returns once `unit`'s weights are updated (and those of every unit before it)."""
        if self.pending:
            self.pending[self.position[id(unit)]].result()

    def finish(self) -> None:
        for future in self.pending:
            future.result()  # an update's error stays pending, so every later wait raises it again
        self.pending = []

    def _run(self, settings: AdamSettings, futures: list[Future]) -> None:
        for k, future in enumerate(futures):
            try:
                self._update_unit(k, settings)
            except BaseException as error:
                error.add_note(f"in solo.train.stream's background optimizer step, unit {k} "
                               "(0 is the embedding, then the decoder layers, then the head)")
                for unfinished in futures[k:]:  # the later units are not updated either
                    unfinished.set_exception(error)
                return
            future.set_result(None)

    @torch.no_grad()
    def _update_unit(self, k: int, settings: AdamSettings) -> None:
        adam = self.optimizer
        for param in self.owned[k]:
            if settings.grad_divisor != 1:
                param.grad.div_(settings.grad_divisor)
            state = adam.state[param]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(param.data, dtype=torch.float32),
                             exp_avg_sq=torch.zeros_like(param.data, dtype=torch.float32))
            state["step"] += 1
            # view(-1) refuses a non-contiguous tensor, which adam_update would silently update in a copy.
            flat = [t.view(-1) for t in (param.data, param.grad, state["exp_avg"], state["exp_avg_sq"])]
            for start in range(0, param.numel(), self.CHUNK):
                adam.ds_opt_adam.adam_update(
                    adam.opt_id, state["step"], settings.lr, *settings.betas, settings.eps, settings.weight_decay,
                    settings.bias_correction, *(t[start:start + self.CHUNK] for t in flat))
            param.grad.zero_()
        self.units[k].repack()  # its compute-dtype copy, which the next step's forward fetches
