"""The layer-streaming training engine (`engine: stream`): host memory holds the model, the device is a scratchpad.

The fp32 master weights, their gradients and Adam's two moments live in host memory: 16 bytes per
parameter, and on CUDA the weights are pinned (so copies are asynchronous) in the power-of-two
blocks PyTorch's host allocator hands out, 1–3 bytes per parameter more. A step walks the model a
unit at a time (the embedding, each decoder layer, then the final norm with the tied head): the unit's weights
are copied to the device on a copy-in stream into one of two slots while the previous unit computes
in the other (double buffering), and the slot is reused once that unit is done. Forward keeps only
the activations at layer boundaries; the head's backward runs as soon as its loss exists, so the
logits never outlive forward. Backward walks the layers in reverse, recomputing each layer's
forward from its boundary activation, and copies that layer's gradients back to host on a third
stream, where they are added into the fp32 gradients. At the end of a global batch the host
gradients are averaged over data-parallel workers (gloo, on host memory) and their global norm sets
the clipping; then DeepSpeed's CPU Adam (AdamW) steps the master weights a unit at a time, in forward
order, on a background thread (`OverlappedAdam`), and `step()` returns at once: the next step's
forward fetches each unit as soon as that unit is updated, so the device computes the first layers
while the host still updates the last ones. Whatever reads the weights from outside (`module`,
`eval()`, `save_checkpoint`, `load_checkpoint`) first waits for the step in flight, and an error on
that thread is raised in the training thread. On the host (`device: cpu`) the "device" is host memory:
the streams are torch.cpu's no-op stand-ins and nothing is copied (a unit's device copy is its master
tensor, a gradient is added where it was computed), while the slots, events, double buffering and
deferred gradient return run the same code as on a GPU.

`StreamEngine` is driven exactly like DeepSpeed's engine by `solo.train.loop.train_worker`:
`engine(**inputs).loss`, `engine.backward(loss)`, `engine.step()` each micro-batch (accumulation
inside), `engine.module`, `train()`/`eval()`, `save_checkpoint` and `load_checkpoint`.

Checkpoints use DeepSpeed's layout: `latest` names the tag; `<tag>/mp_rank_00_model_states.pt` holds
the consolidated fp32 weights under "module" with the loop's client state beside them (as a ZeRO-0
checkpoint does), and `<tag>/stream_optim_states.pt` Adam's moments; every worker holds the same
full state, so rank 0 alone writes. Resuming a stream checkpoint is exact. A stream run also resumes
from a DeepSpeed checkpoint (any ZeRO stage, any worker count; ZeRO shards are consolidated with
deepspeed.utils.zero_to_fp32): the weights, the step, the loader position and the RNG state carry
over, and from ZeRO-1/2/3 Adam's moments too (a ZeRO-0 checkpoint's moments restart at zero). The
other way, a DeepSpeed run from a stream checkpoint, is refused (`solo.train.checkpoints.check_resumable`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call

from solo.train.config import TrainConfig
from solo.errors import SoloError

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file name for a checkpoint's whole module
OPTIMIZER_STATES = "stream_optim_states.pt"  # what marks a stream checkpoint: Adam's moments, unsharded
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def host_bytes_per_parameter() -> int:
    """Host memory the engine keeps per parameter: fp32 master weight, fp32 gradient, Adam's two fp32
    moments. Per unit it adds two pinned staging slots for returning gradients (see StreamEngine)."""
    return 4 + 4 + 4 + 4


def is_stream_checkpoint(folder: Path) -> bool:
    latest = folder / "latest"
    return latest.exists() and (folder / latest.read_text().strip() / OPTIMIZER_STATES).exists()


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


class _Head(nn.Module):
    """The final norm and the (tied) output projection, called as one unit; the stock modules, not copies."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))


@dataclass
class Unit:
    """What goes to the device at once: the embedding, one decoder layer, or the head."""

    module: nn.Module
    params: list[tuple[str, nn.Parameter]]  # names inside `module` → host master parameters

    @classmethod
    def of(cls, module: nn.Module) -> "Unit":
        return cls(module, list(module.named_parameters()))

    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


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
    still update (`WeightStream` waits for a unit's update before fetching it).

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
        self.position = {id(unit): k for k, unit in enumerate(units)}
        self.owned: list[list[nn.Parameter]] = []
        seen: set[int] = set()
        for unit in units:
            self.owned.append([p for _, p in unit.params if id(p) not in seen])
            seen.update(id(p) for p in self.owned[-1])
        if seen != {id(p) for p in optimizer.param_groups[0]["params"]}:
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


class WeightStream:
    """Device copies of units' weights in two slots: while the caller computes with one unit, the next
    unit's weights are copied into the other slot on the copy-in stream. A unit is fetched only once the
    optimizer step in flight has updated it."""

    def __init__(self, streams: DeviceStreams, slot_numel: int, compute_dtype: torch.dtype,
                 updates: OverlappedAdam):
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


@dataclass
class _Saved:
    """What forward leaves for backward: boundary activations and the gradient at the head's input."""

    input_ids: torch.Tensor
    mask: object
    position_embeddings: tuple
    position_ids: torch.Tensor
    boundaries: list[torch.Tensor] = field(default_factory=list)
    head_input_grad: torch.Tensor | None = None


class StreamEngine:
    """Trains a stock LlamaForCausalLM whose weights stay in host memory, streaming a unit at a time
    through `device`. Host memory: `host_bytes_per_parameter()` per parameter, plus (on CUDA) two
    pinned staging slots of the largest unit in the compute dtype; device memory: two fp32 slots of
    the largest unit (plus its compute-dtype cast under bf16), one unit's gradients, the boundary
    activations and one layer's recomputed activations (on a CPU those are in host memory, no slots)."""

    def __init__(self, model, config: TrainConfig, device: torch.device, accumulation: int):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        if config.strategy.precision not in COMPUTE_DTYPES:
            raise SoloError(f"engine: stream computes in fp32 or bf16, not {config.strategy.precision}")
        # `module` (below) hands the model out once the optimizer step in flight is done; inside, `_model`.
        self._model, self.config, self.device, self.accumulation = model, config, device, accumulation
        self.training = True
        self.compute_dtype = COMPUTE_DTYPES[config.strategy.precision]
        self.streams = DeviceStreams(device)
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        # Gradients are all-reduced where they live, in host memory: gloo (NCCL reaches device memory only).
        self.host_group = None
        if self.world > 1 and dist.get_backend() != "gloo":
            self.host_group = dist.new_group(backend="gloo")

        self.params = list(model.parameters())  # each tied weight once
        with torch.no_grad():
            for param in self.params:
                param.data = self.streams.pinned(param.data.float())
                param.requires_grad_(False)  # gradients come from the device copies, not through autograd here
                if self.world > 1:
                    dist.broadcast(param.data, src=0, group=self.host_group)
        self.grads = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float32)
        offset = 0
        for param in self.params:
            param.grad = self.grads[offset:offset + param.numel()].view(param.shape)
            offset += param.numel()

        llama = model.model
        self.embedding = Unit.of(llama.embed_tokens)
        self.layers = [Unit.of(layer) for layer in llama.layers[:model.config.num_hidden_layers]]
        self.head = Unit.of(_Head(llama.norm, model.lm_head))
        self.units = [self.embedding, *self.layers, self.head]  # forward order
        o = config.optim
        self.optimizer = DeepSpeedCPUAdam(self.params, lr=o.lr, betas=(o.beta1, o.beta2),
                                          weight_decay=o.weight_decay, adamw_mode=True)
        self.adam = OverlappedAdam(self.optimizer, self.units)
        slot_numel = max(unit.numel() for unit in self.units)
        self.weights = WeightStream(self.streams, slot_numel, self.compute_dtype, self.adam)
        self.gradients = GradientReturn(self.streams, slot_numel, self.compute_dtype)
        # RoPE's inverse frequencies (a buffer, no weights) stay on the device for good.
        self.rotary = type(llama.rotary_emb)(config=model.config).to(device)
        self.micro_steps = self.global_steps = 0
        self._saved: _Saved | None = None

    # ------------------------------------------------------------ what the loop calls

    @property
    def module(self):
        """The model, once the optimizer step in flight has updated all of it: whatever reads the weights
        from outside (export, state_dict, tests) goes through here."""
        self._finish_pending_step()
        return self._model

    def _finish_pending_step(self) -> None:
        """Waits for the background optimizer step, raising its error if it failed."""
        self.adam.finish()

    def train(self) -> None:
        self.training = True
        self._model.train()

    def eval(self) -> None:
        self._finish_pending_step()
        self.training = False
        self._model.eval()

    def __call__(self, input_ids, labels=None, position_ids=None, attention_mask=None, use_cache=False):
        from transformers.masking_utils import create_causal_mask
        from transformers.modeling_outputs import CausalLMOutputWithPast

        training = self.training and torch.is_grad_enabled()
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        hidden, saved, logits, loss = None, None, None, None
        for unit, weights in self.weights.stream([self.embedding, *self.layers, self.head]):
            if unit is self.head:
                logits, loss = self._head(unit, weights, hidden, labels, saved if training else None)
                continue
            with torch.no_grad():
                if unit is self.embedding:
                    hidden = functional_call(unit.module, weights, (input_ids,))
                    # Packed rows restart their position ids; transformers then builds a block-diagonal mask.
                    mask = create_causal_mask(config=self._model.config, inputs_embeds=hidden,
                                              attention_mask=attention_mask, past_key_values=None,
                                              position_ids=position_ids)
                    rope = self.rotary(hidden, position_ids=position_ids)
                    saved = _Saved(input_ids, mask, rope, position_ids)
                    continue
                if training:
                    saved.boundaries.append(hidden)
                hidden = self._layer(unit, weights, hidden, saved)
        self._saved = saved if training else None
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the last forward (`loss` is its output; the head's part is already done)."""
        saved = self._saved
        if saved is None:
            raise RuntimeError("backward needs a training forward before it")
        grad = saved.head_input_grad
        for unit, weights in self.weights.stream([*reversed(self.layers), self.embedding]):
            leaves = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
            with torch.enable_grad():
                if unit is self.embedding:
                    out = functional_call(unit.module, leaves, (saved.input_ids,))
                    grads = torch.autograd.grad(out, list(leaves.values()), grad)
                else:  # the layer's forward again, from its boundary activation
                    boundary = saved.boundaries.pop().requires_grad_(True)
                    out = self._layer(unit, leaves, boundary, saved)
                    grad, *grads = torch.autograd.grad(out, [boundary, *leaves.values()], grad)
            self.gradients.send([p for _, p in unit.params], grads)
        self.gradients.flush()
        self._saved = None

    def step(self) -> None:
        """One micro-batch done; at the end of a global batch, average, clip and step (as DeepSpeed does),
        the optimizer step starting on the background thread with the learning rate set now."""
        self.micro_steps += 1
        if self.micro_steps % self.accumulation:
            return
        if self.world > 1:
            dist.all_reduce(self.grads, group=self.host_group)
            self.grads.div_(self.world)
        grad_divisor = 1.0
        clip = self.config.optim.grad_clip
        if clip > 0:
            # DeepSpeed's rule (ZeRO's unscale_and_clip_grads), so the two engines take the same steps; the
            # division is applied unit by unit with the update, an elementwise op giving the same bits.
            factor = (self.grads.norm().item() + 1e-6) / clip
            if factor > 1:
                grad_divisor = factor
        self.adam.start(grad_divisor)  # it zeroes each unit's gradients once the unit is updated
        self.global_steps += 1

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, folder, tag: str, client_state: dict | None = None, save_latest: bool = True,
                        exclude_frozen_parameters: bool = False) -> None:
        self._finish_pending_step()
        if self.rank != 0:
            return  # every worker holds the same full state
        target = Path(folder) / tag
        target.mkdir(parents=True, exist_ok=True)
        torch.save({"module": self._model.state_dict(), "global_steps": self.global_steps,
                    "dp_world_size": self.world, **(client_state or {})}, target / MODEL_STATES)
        torch.save({"optimizer": self.optimizer.state_dict(), "micro_steps": self.micro_steps},
                   target / OPTIMIZER_STATES)
        if save_latest:
            (Path(folder) / "latest").write_text(tag)

    def load_checkpoint(self, folder, load_module_strict: bool = True) -> tuple[str, dict]:
        """Restores a stream checkpoint in full, or a DeepSpeed one's weights (see the module docstring)."""
        self._finish_pending_step()  # or a step still in flight would write over what is loaded
        folder = Path(folder)
        tag = (folder / "latest").read_text().strip()
        path = folder / tag
        if (path / OPTIMIZER_STATES).exists():
            states = torch.load(path / MODEL_STATES, map_location="cpu", weights_only=False)
            weights = states.pop("module")
            optimizer = torch.load(path / OPTIMIZER_STATES, map_location="cpu", weights_only=False)
            self.optimizer.load_state_dict(optimizer["optimizer"])
            self.micro_steps, self.global_steps = optimizer["micro_steps"], states["global_steps"]
            self._replay_bias_correction()
        else:
            states, weights = self._deepspeed_states(folder, tag)
            self.global_steps = states.get("global_steps", 0)
            self.micro_steps = self.global_steps * self.accumulation
            self._load_zero_moments(path)
        with torch.no_grad():
            self._model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=load_module_strict)
        client = {k: v for k, v in states.items() if k not in ("global_steps", "dp_world_size", "optimizer")}
        return str(path), client

    @staticmethod
    def _deepspeed_states(folder: Path, tag: str) -> tuple[dict, dict]:
        path = folder / tag
        if list(path.glob("*_optim_states.pt")) and not (path / MODEL_STATES).exists():
            # ZeRO-3: the weights are in the workers' fp32 shards; rank 0's file holds the client state.
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            states = torch.load(path / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu",
                                weights_only=False)
            return states, get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
        states = torch.load(path / MODEL_STATES, map_location="cpu", weights_only=False)
        if list(path.glob("*_optim_states.pt")):
            # ZeRO-1/2: the module file may hold 16-bit weights; the fp32 ones are in the optimizer shards.
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return states, get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
        return states, states["module"]

    def _load_zero_moments(self, path: Path) -> None:
        """Adam's moments from a ZeRO-1/2/3 checkpoint's optimizer shards. They are partitioned and flattened
        exactly as the fp32 weights are, so zero_to_fp32's own reassembly of the weights, handed the moments
        in their place, gives them back per parameter name. Other checkpoints leave the moments at zero."""
        from deepspeed.utils import zero_to_fp32

        files = zero_to_fp32.get_optim_files(str(path)) if list(path.glob("*_optim_states.pt")) else []
        shards = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
        # ZeRO-3 keeps CPU Adam's state under optimizer_state_dict, ZeRO-1/2 under base_optimizer_state.
        adam = [shard.get("optimizer_state_dict") or shard.get("base_optimizer_state") for shard in shards]
        if not adam or not all(isinstance(a, dict) and a.get("state") for a in adam):
            return
        adam = [a["state"] for a in adam]
        weights_parser = zero_to_fp32.parse_optim_states

        def moments(key: str) -> dict:
            def parse(optim_files, folder):
                stage, world, _, paddings = weights_parser(optim_files, folder)
                return stage, world, [[state[g][key] for g in sorted(state)] for state in adam], paddings

            zero_to_fp32.parse_optim_states = parse
            try:
                return zero_to_fp32.to_torch_tensor(zero_to_fp32._get_fp32_state_dict_from_zero_checkpoint(
                    str(path), exclude_frozen_parameters=False))
            finally:
                zero_to_fp32.parse_optim_states = weights_parser

        exp_avg, exp_avg_sq = moments("exp_avg"), moments("exp_avg_sq")
        step = int(next(iter(adam[0].values()))["step"])
        for name, param in self._model.named_parameters():
            self.optimizer.state[param] = {"step": step, "exp_avg": exp_avg[name].float().contiguous(),
                                           "exp_avg_sq": exp_avg_sq[name].float().contiguous()}
        self._replay_bias_correction()

    def _replay_bias_correction(self) -> None:
        """CPU Adam keeps beta^t as a running float product, which a fresh optimizer would recompute with
        pow() and land a last bit away; replaying the product on a one-element dummy makes resume exact."""
        steps = max((s["step"] for s in self.optimizer.state.values()), default=0)
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        dummy = [torch.zeros(1) for _ in range(4)]
        for step in range(1, steps + 1):
            self.optimizer.ds_opt_adam.adam_update(self.optimizer.opt_id, step, 0.0, beta1, beta2, group["eps"], 0.0,
                                                   group["bias_correction"], *dummy)

    # ------------------------------------------------------------ pieces

    def _head(self, unit: Unit, weights: dict, hidden: torch.Tensor, labels, saved: _Saved | None):
        """Logits and loss; in training (`saved` given) the head's backward too, right away: the logits
        (batch × sequence × vocabulary, the largest activation) are freed now, and backward starts from
        the gradient at the head's input."""
        if saved is None:
            logits = functional_call(unit.module, weights, (hidden,))
            return logits, (self._loss(logits, labels) if labels is not None else None)
        with torch.enable_grad():
            head_input = hidden.detach().requires_grad_(True)
            leaves = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
            logits = functional_call(unit.module, leaves, (head_input,))
            loss = self._loss(logits, labels)
            saved.head_input_grad, *grads = torch.autograd.grad(loss / self.accumulation,
                                                                [head_input, *leaves.values()])
        self.gradients.send([p for _, p in unit.params], grads)
        return logits.detach(), loss.detach()

    def _layer(self, unit: Unit, weights: dict, hidden: torch.Tensor, saved: _Saved) -> torch.Tensor:
        return functional_call(unit.module, weights, (hidden,), {
            "attention_mask": saved.mask, "position_embeddings": saved.position_embeddings,
            "position_ids": saved.position_ids})

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._model.loss_function(logits=logits, labels=labels, vocab_size=self._model.config.vocab_size)
