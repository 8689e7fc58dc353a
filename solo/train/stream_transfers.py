"""How the stream engine (solo.train.stream) lays out its host memory and moves weights and gradients: a unit's
weights as one flat fp32 master and one flat compute-dtype copy (so a decoder layer goes to the device in one
contiguous copy, into one of two device slots), the units that stay on the device (embedding, final norm, head),
and gradients summed on the device and returned to host once a step, their adds into the fp32 gradients on a
background thread. Each copy runs on its own stream so that it overlaps the compute before or after it."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn


class DeviceStreams:
    """The compute, copy-in and copy-out streams. On CUDA they are real streams, so layer i+1's weights
    and layer i's gradients travel while layer i computes; on the host they are torch.cpu's no-op
    stand-ins, and the same code runs in order."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.backend = torch.get_device_module(device)  # torch.cuda or torch.cpu
        self.compute = self.backend.current_stream(device)
        self.copy_in = self.backend.Stream(device) if self.cuda else self.backend.Stream()
        self.copy_out = self.backend.Stream(device) if self.cuda else self.backend.Stream()
        # On the host the "device copy" of a tensor is the tensor itself: nothing is copied, while the slots,
        # events and deferred gradient adds run as on a GPU.
        self.host_is_device = not self.cuda

    def event(self, stream):
        event = self.backend.Event()
        event.record(stream)
        return event

    def use(self, stream):
        return self.backend.stream(stream)

    def pinned_empty(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """Page-locked host memory where a device copy from or to it must be asynchronous."""
        return torch.empty(numel, dtype=dtype, pin_memory=self.cuda)

    def pinned_buffers(self, sizes: list[tuple[int, torch.dtype]]) -> list[torch.Tensor]:
        """Flat host buffers of these (elements, dtype), pinned on CUDA, cut from the few blocks `pinned_blocks`
        plans: PyTorch's caching host allocator rounds each pinned allocation up to a power of two, which for
        a buffer per unit would lose up to half of it (5.7 bytes a parameter at 2.7b under bf16)."""
        if not self.cuda:
            return [torch.empty(numel, dtype=dtype) for numel, dtype in sizes]
        nbytes = [-(-numel * dtype.itemsize // PINNED_ALIGNMENT) * PINNED_ALIGNMENT for numel, dtype in sizes]
        buffers = []
        for block_bytes, offsets in pinned_blocks(nbytes):
            block = torch.empty(block_bytes, dtype=torch.uint8, pin_memory=True)
            for offset in offsets:
                numel, dtype = sizes[len(buffers)]
                buffers.append(block[offset:offset + numel * dtype.itemsize].view(dtype))
        return buffers

    def keep_for(self, tensor: torch.Tensor, stream) -> None:
        """Tell the caching allocator that `stream` still reads `tensor`, allocated on another stream."""
        if self.cuda:
            tensor.record_stream(stream)

    def settle_copies_in(self) -> None:
        """Waits for every copy to the device enqueued so far (their host sources may be rewritten next)."""
        if self.cuda:
            self.copy_in.synchronize()


PINNED_ALIGNMENT = 512  # bytes: each buffer in a pinned block starts aligned for any dtype and for fast copies


def pinned_blocks(nbytes: list[int]) -> list[tuple[int, list[int]]]:
    """Power-of-two blocks (what the caching host allocator hands out anyway) holding buffers of these sizes in
    order, each buffer whole in one block: [(block bytes, the offsets of the buffers it holds)]. A block holds up
    to 8 of the largest buffer, so at most about an eighth is lost at its end; a new block is no larger than the
    power of two at or below what is left to place (at least the next buffer), or holds all that is left where
    that loses an eighth of it at most, so the last ones lose little."""
    def floor_power(n: int) -> int:
        return 1 << (n.bit_length() - 1)

    def ceil_power(n: int) -> int:
        return 1 << (n - 1).bit_length()

    cap = ceil_power(8 * max(nbytes, default=1))
    blocks: list[tuple[int, list[int]]] = []
    used = 0
    for k, size in enumerate(nbytes):
        if not blocks or used + size > blocks[-1][0]:
            left = sum(nbytes[k:])
            # All that is left in one block where that loses little, else the power of two below it.
            fits_all = ceil_power(left) <= cap and ceil_power(left) - left <= left // 8
            blocks.append((ceil_power(left) if fits_all else min(cap, max(floor_power(left), ceil_power(size))), []))
            used = 0
        blocks[-1][1].append(used)
        used += size
    return blocks


@dataclass(eq=False)  # identity, not tensor contents: units are dictionary keys
class Unit:
    """What the engine handles at once: the embedding, one decoder layer, or the head (final norm + projection).

    `owned` are the parameters whose storage it holds (a tied weight lives in the first unit using it): `master`
    is their fp32 values in one flat host buffer (the parameters are views of it), `grad` their fp32 gradients
    (a flat slice of the engine's one gradient buffer), `packed` the master in the compute dtype, refreshed by
    the optimizer thread right after it updates the unit (the master itself under fp32)."""

    module: nn.Module
    params: list[tuple[str, nn.Parameter]]  # names inside `module` → host master parameters
    owned: list[nn.Parameter] = field(default_factory=list)
    master: torch.Tensor | None = None
    packed: torch.Tensor | None = None
    grad: torch.Tensor | None = None

    @classmethod
    def of(cls, module: nn.Module) -> Unit:
        return cls(module, list(module.named_parameters()))

    def numel(self) -> int:
        return sum(p.numel() for p in self.owned)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """`flat` (laid out as `master`) cut into one view per owned parameter."""
        views, offset = [], 0
        for param in self.owned:
            views.append(flat[offset:offset + param.numel()].view(param.shape))
            offset += param.numel()
        return views

    def repack(self) -> None:
        if self.packed is not self.master:
            self.packed.copy_(self.master)


def lay_out(units: list[Unit], streams: DeviceStreams, compute_dtype: torch.dtype) -> torch.Tensor:
    """Moves the units' parameters into flat per-unit fp32 masters (pinned on CUDA) with their compute-dtype
    copies, and gives them fp32 gradients, one flat buffer in unit order; returns that buffer."""
    seen: set[int] = set()
    for unit in units:
        unit.owned = [p for _, p in unit.params if id(p) not in seen]
        seen.update(id(p) for p in unit.owned)
    grads = torch.zeros(sum(unit.numel() for unit in units), dtype=torch.float32)
    # Masters and packed copies in blocks of their own: a checkpoint (torch.save) writes the masters' blocks whole.
    masters = streams.pinned_buffers([(unit.numel(), torch.float32) for unit in units])
    packs = streams.pinned_buffers([(unit.numel(), compute_dtype) for unit in units]) \
        if compute_dtype != torch.float32 else masters
    offset = 0
    with torch.no_grad():
        for unit, master, packed in zip(units, masters, packs):
            unit.master, unit.packed = master, packed
            unit.grad = grads[offset:offset + unit.numel()]
            offset += unit.numel()
            for param, value, grad in zip(unit.owned, unit.split(unit.master), unit.split(unit.grad)):
                value.copy_(param.data)
                param.data, param.grad = value, grad
                param.requires_grad_(False)  # gradients come from the device copies, not through autograd here
            unit.repack()
    return grads


class UnitUpdates(Protocol):
    """The optimizer step in flight, as the weight stream sees it (solo.train.stream_adam.OverlappedAdam)."""

    def done(self, unit: Unit) -> bool: ...
    def wait(self, unit: Unit) -> None: ...


class WeightStream:
    """Device copies of decoder layers' weights in two slots: while the caller computes with one layer, the next
    layer's packed weights are copied into the other slot on the copy-in stream, in one contiguous copy. A layer
    is fetched only once the optimizer step in flight has updated it. `fetches` counts each unit's fetches."""

    def __init__(self, streams: DeviceStreams, slot_numel: int, compute_dtype: torch.dtype, updates: UnitUpdates):
        self.streams, self.updates = streams, updates
        self.slots = [torch.empty(0 if streams.host_is_device else slot_numel, dtype=compute_dtype,
                                  device=streams.device) for _ in range(2)]
        self.slot_free: list = [None, None]  # an event on the compute stream once the slot's last unit is done
        self.fetches: Counter[Unit] = Counter()

    def _fetch(self, unit: Unit, slot: int):
        s = self.streams
        self.fetches[unit] += 1
        if s.host_is_device:
            return dict(zip((name for name, _ in unit.params), unit.split(unit.packed))), None
        if self.slot_free[slot] is not None:
            s.copy_in.wait_event(self.slot_free[slot])
        with s.use(s.copy_in):
            flat = self.slots[slot][:unit.numel()]
            flat.copy_(unit.packed, non_blocking=True)
            return dict(zip((name for name, _ in unit.params), unit.split(flat))), s.event(s.copy_in)

    def stream(self, units: list[Unit]):
        """Yields (unit, its weights on the device in the compute dtype), the next unit's copy in flight;
        whatever the caller runs on a unit must be enqueued before it asks for the next one."""
        if not units:
            return
        self.updates.wait(units[0])
        pending = self._fetch(units[0], 0)
        for k, unit in enumerate(units):
            views, ready = pending
            upcoming = units[k + 1] if k + 1 < len(units) else None
            if upcoming is not None and self.updates.done(upcoming):
                pending, upcoming = self._fetch(upcoming, (k + 1) % 2), None
            # else the next unit is fetched once this one's work is enqueued: waiting for its update here
            # would hold back this unit's compute too.
            if ready is not None:
                self.streams.compute.wait_event(ready)
            yield unit, views
            self.slot_free[k % 2] = self.streams.event(self.streams.compute)
            if upcoming is not None:
                self.updates.wait(upcoming)
                pending = self._fetch(upcoming, (k + 1) % 2)


class ResidentWeights:
    """The units that stay on the device for the whole run (embedding, final norm, head), in the compute dtype:
    after each optimizer step a unit is copied in once from its packed host copy, when it is first used and
    its update is done. On the host they are the packed copies themselves."""

    def __init__(self, streams: DeviceStreams, units: list[Unit], compute_dtype: torch.dtype,
                 updates: UnitUpdates):
        self.streams, self.units, self.updates = streams, units, updates
        self.flat = {unit: unit.packed if streams.host_is_device else
                     torch.empty(unit.numel(), dtype=compute_dtype, device=streams.device) for unit in units}
        by_param = {id(p): view for unit in units for p, view in zip(unit.owned, unit.split(self.flat[unit]))}
        self.weights = {unit: {name: by_param[id(p)] for name, p in unit.params} for unit in units}
        self.stale = set(units)

    def get(self, unit: Unit) -> dict[str, torch.Tensor]:
        if unit in self.stale:
            self.updates.wait(unit)
            if not self.streams.host_is_device:
                s = self.streams
                s.copy_in.wait_event(s.event(s.compute))  # whatever still reads the old values (an evaluation)
                with s.use(s.copy_in):
                    self.flat[unit].copy_(unit.packed, non_blocking=True)
                s.compute.wait_event(s.event(s.copy_in))
            self.stale.discard(unit)
        return self.weights[unit]

    def mark_stale(self) -> None:
        """The host masters are being (or were) rewritten: copy each unit in again before its next use."""
        self.stale = set(self.units)


class GradientReturn:
    """Gradients summed on the device in fp32 over a step's micro-batches, returned to host once per unit:
    copied into one of two pinned staging slots on the copy-out stream, then added into the host's fp32
    gradients by a background thread once the copy landed, so neither the copy nor the add holds up the
    training thread. Decoder layers sum into two device accumulators taken in turn (`accumulator`)."""

    def __init__(self, streams: DeviceStreams, accumulator_numel: int, staging_numel: int):
        self.streams = streams
        self.accumulators = [torch.empty(accumulator_numel, dtype=torch.float32, device=streams.device)
                             for _ in range(2)]
        self.staging = [streams.pinned_empty(0 if streams.host_is_device else staging_numel, torch.float32)
                        for _ in range(2)]
        self.in_flight: list[Future | None] = [None, None]  # per staging slot: its add into the host gradients
        self.accumulator_sent: list[Future | None] = [None, None]
        self.next_slot = self.next_accumulator = 0
        self.adds = ThreadPoolExecutor(max_workers=1, thread_name_prefix="solo-stream-grads")

    def accumulator(self, numel: int) -> torch.Tensor:
        """A zeroed fp32 device buffer to sum a unit's gradients in: the one sent two units ago, once that
        unit's gradients reached the host."""
        k = self.next_accumulator
        self.next_accumulator ^= 1
        self._wait(self.accumulator_sent, k)
        flat = self.accumulators[k][:numel]
        flat.zero_()
        return flat

    def send(self, device_grad: torch.Tensor, host_grad: torch.Tensor) -> None:
        s, slot = self.streams, self.next_slot
        self.next_slot ^= 1
        self._wait(self.in_flight, slot)
        s.copy_out.wait_event(s.event(s.compute))
        staged = device_grad
        if not s.host_is_device:
            with s.use(s.copy_out):
                staged = self.staging[slot][:device_grad.numel()]
                staged.copy_(device_grad, non_blocking=True)
        landed = s.event(s.copy_out)
        added = self.adds.submit(self._add, landed, staged, host_grad)
        self.in_flight[slot] = added
        for k, accumulator in enumerate(self.accumulators):
            if device_grad.data_ptr() == accumulator.data_ptr():
                self.accumulator_sent[k] = added

    @staticmethod
    def _add(landed, staged: torch.Tensor, host_grad: torch.Tensor) -> None:
        landed.synchronize()
        host_grad.add_(staged.view_as(host_grad))

    @staticmethod
    def _wait(futures: list, k: int) -> None:
        if futures[k] is not None:
            futures[k].result()  # raises the add's error, if any
            futures[k] = None

    def flush(self) -> None:
        """Returns once every gradient sent is in the host buffer."""
        for futures in (self.in_flight, self.accumulator_sent):
            for k in range(2):
                self._wait(futures, k)
