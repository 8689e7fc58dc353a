"""Where the stream engine (solo.train.stream) keeps the activations at decoder-layer boundaries between a step's
forward and its backward: every micro-batch's input to every layer, which backward recomputes the layer from.

At 2.7b and 128k tokens a step they are ~21 GB in bf16, more than a 24 GB card can spare next to the working
set, so on CUDA they stay in device memory up to a budget and the rest go to pinned host memory: copied out on
the copy-out stream as forward produces them, and back on the copy-in stream one boundary ahead of backward's
use, so both copies overlap compute. On the host they stay where they are.
"""

from __future__ import annotations

import torch

from solo.train.stream_transfers import DeviceStreams

Key = tuple[int, int]  # (decoder layer, micro-batch)


def device_budget_bytes(streams: DeviceStreams) -> int:
    """Device memory the boundaries may take, decided once the engine's slots and resident weights are
    allocated: half of what is free to this process then. The other half is the margin for what a step
    computes besides (a layer's recomputed activations of one micro-batch, the head's logits or loss chunks,
    each micro-batch's gradient at the current boundary, the caching allocator's fragmentation); a setting
    would only move this line."""
    if not streams.cuda:
        return 0
    device = streams.device
    free, total = torch.cuda.mem_get_info(device)
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    # What this process may still reserve (within a cap set by torch.cuda.set_per_process_memory_fraction, as
    # benchmarks/stream_vs_zero3.py sets one), plus PyTorch's cache of freed blocks, free to it too.
    cap = int(torch.cuda.get_per_process_memory_fraction(device) * total)
    return (min(free, cap - reserved) + reserved - allocated) // 2


class Boundaries:
    """The boundary activations of one step, put in forward order and taken in backward's (reverse) order."""

    def __init__(self, streams: DeviceStreams, budget_bytes: int):
        self.streams, self.budget_bytes = streams, budget_bytes
        self.on_device: dict[Key, torch.Tensor] = {}
        self.on_host: dict[Key, tuple[torch.Tensor, object]] = {}  # pinned copy, the copy-out's event
        self.coming: dict[Key, tuple] = {}  # on its way back: device tensor, its copy's event, the pinned buffer
        self.device_bytes = 0
        # Pinned buffers back from the device, for the next step's boundaries (with the event of the copy that
        # read them last), and how many have been pinned: the host memory is allocated once, then reused.
        self.spare: list[tuple[torch.Tensor, object]] = []
        self.pinned = 0

    def _host_buffer(self, like: torch.Tensor) -> torch.Tensor:
        s = self.streams
        for k, (buffer, last_read) in enumerate(self.spare):
            if buffer.numel() == like.numel() and buffer.dtype == like.dtype:
                del self.spare[k]
                s.copy_out.wait_event(last_read)
                return buffer.view(like.shape)
        # Pinned several at a time, one power-of-two block each time (pinning each alone would round it up to a
        # power of two, up to twice its size), as many as were pinned before up to a block of 8 or more: what a
        # step needs is pinned in a few blocks, with little beyond it.
        nbytes = like.numel() * like.element_size()
        most = max(1, (1 << (8 * nbytes - 1).bit_length()) // nbytes)
        count = min(most, max(1, self.pinned))
        self.pinned += count
        fresh = s.pinned_buffers([(like.numel(), like.dtype)] * count)
        self.spare.extend((buffer, s.event(s.copy_out)) for buffer in fresh[1:])
        return fresh[0].view(like.shape)

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        s = self.streams
        size = tensor.numel() * tensor.element_size()
        if s.host_is_device or self.device_bytes + size <= self.budget_bytes:
            self.on_device[key] = tensor
            self.device_bytes += size
            return
        host = self._host_buffer(tensor)
        s.copy_out.wait_event(s.event(s.compute))
        with s.use(s.copy_out):
            host.copy_(tensor, non_blocking=True)
        s.keep_for(tensor, s.copy_out)  # the compute stream may free it before the copy ran
        self.on_host[key] = (host, s.event(s.copy_out))

    def prefetch(self, key: Key) -> None:
        """Starts copying `key` back to the device if it was moved out (and is not on its way already)."""
        if key not in self.on_host or key in self.coming:
            return
        s = self.streams
        host, copied_out = self.on_host.pop(key)
        s.copy_in.wait_event(copied_out)
        with s.use(s.copy_in):
            tensor = host.to(s.device, non_blocking=True)
        s.keep_for(tensor, s.compute)  # allocated on the copy-in stream, used on the compute stream
        self.coming[key] = (tensor, s.event(s.copy_in), host)

    def take(self, key: Key) -> torch.Tensor:
        if key in self.on_device:
            tensor = self.on_device.pop(key)
            self.device_bytes -= tensor.numel() * tensor.element_size()
            return tensor
        self.prefetch(key)
        tensor, arrived, host = self.coming.pop(key)
        self.streams.compute.wait_event(arrived)
        self.spare.append((host.view(-1), arrived))
        return tensor

    def start_step(self) -> None:
        """Drops what a step that failed midway left behind (its keys would be the next step's)."""
        self.on_device.clear(), self.on_host.clear(), self.coming.clear()
        self.device_bytes = 0
