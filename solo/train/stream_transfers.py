"""How the stream engine (solo.train.stream) moves a unit's weights to the device and its gradients back:
two device slots for weights, two pinned host slots for gradients, each copy on its own stream so that it
overlaps the compute of the unit before or after."""

from __future__ import annotations

from dataclasses import dataclass
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

    def pinned(self, tensor: torch.Tensor) -> torch.Tensor:
        """Page-locked host memory where a device copy from or to it must be asynchronous."""
        return tensor.pin_memory() if self.cuda else tensor

    def keep_for(self, tensor: torch.Tensor, stream) -> None:
        """Tell the caching allocator that `stream` still reads `tensor`, allocated on another stream."""
        if self.cuda:
            tensor.record_stream(stream)


@dataclass
class Unit:
    """What goes to the device at once: the embedding, one decoder layer, or the head."""

    module: nn.Module
    params: list[tuple[str, nn.Parameter]]  # names inside `module` → host master parameters

    @classmethod
    def of(cls, module: nn.Module) -> Unit:
        return cls(module, list(module.named_parameters()))

    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


class UnitUpdates(Protocol):
    """The optimizer step in flight, as the weight stream sees it (solo.train.stream_adam.OverlappedAdam)."""

    def done(self, unit: Unit) -> bool: ...
    def wait(self, unit: Unit) -> None: ...


class WeightStream:
    """Device copies of units' weights in two slots: while the caller computes with one unit, the next
    unit's weights are copied into the other slot on the copy-in stream. A unit is fetched only once the
    optimizer step in flight has updated it."""

    def __init__(self, streams: DeviceStreams, slot_numel: int, compute_dtype: torch.dtype,
                 updates: UnitUpdates):
        self.streams, self.compute_dtype, self.updates = streams, compute_dtype, updates
        self.slots = [torch.empty(0 if streams.host_is_device else slot_numel, dtype=torch.float32,
                                  device=streams.device) for _ in range(2)]
        self.slot_free: list = [None, None]  # an event on the compute stream once the slot's last unit is done

    def _fetch(self, unit: Unit, slot: int):
        s = self.streams
        if self.slot_free[slot] is not None:
            s.copy_in.wait_event(self.slot_free[slot])
        views, offset = {}, 0
        with s.use(s.copy_in):
            for name, param in unit.params:
                if s.host_is_device:
                    views[name] = param.detach()
                    continue
                view = self.slots[slot][offset:offset + param.numel()].view(param.shape)
                view.copy_(param.detach(), non_blocking=True)
                views[name] = view
                offset += param.numel()
            return views, s.event(s.copy_in)

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
            self.streams.compute.wait_event(ready)
            yield unit, {name: view.to(self.compute_dtype) for name, view in views.items()}
            self.slot_free[k % 2] = self.streams.event(self.streams.compute)
            if upcoming is not None:
                self.updates.wait(upcoming)
                pending = self._fetch(upcoming, (k + 1) % 2)


class GradientReturn:
    """Each unit's gradients copied back to host on the copy-out stream into one of two pinned staging
    slots, then added into the host's fp32 gradients once the copy landed (deferred to when the slot is
    needed again, so the copy overlaps the next unit's backward)."""

    def __init__(self, streams: DeviceStreams, slot_numel: int, dtype: torch.dtype):
        self.streams = streams
        self.staging = [streams.pinned(torch.empty(0 if streams.host_is_device else slot_numel, dtype=dtype))
                        for _ in range(2)]
        self.in_flight: list = [None, None]
        self.next_slot = 0

    def send(self, params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
        s, slot = self.streams, self.next_slot
        self.next_slot ^= 1
        self._land(slot)
        s.copy_out.wait_event(s.event(s.compute))
        pairs, offset = [], 0
        with s.use(s.copy_out):
            for param, grad in zip(params, grads):
                if s.host_is_device:
                    pairs.append((param, grad))
                    continue
                view = self.staging[slot][offset:offset + grad.numel()].view(grad.shape)
                view.copy_(grad, non_blocking=True)
                s.keep_for(grad, s.copy_out)
                pairs.append((param, view))
                offset += grad.numel()
            self.in_flight[slot] = (s.event(s.copy_out), pairs)

    def _land(self, slot: int) -> None:
        if self.in_flight[slot] is None:
            return
        landed, pairs = self.in_flight[slot]
        landed.synchronize()
        for param, staged in pairs:
            param.grad.add_(staged)  # a tied weight gets both of its units' gradients
        self.in_flight[slot] = None

    def flush(self) -> None:
        for slot in (self.next_slot, self.next_slot ^ 1):  # oldest first
            self._land(slot)
