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

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

from solo.errors import SoloError
from solo.train.config import TrainConfig
from solo.train.stream_adam import OverlappedAdam
from solo.train.stream_transfers import DeviceStreams, GradientReturn, Unit, WeightStream

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file name for a checkpoint's whole module
OPTIMIZER_STATES = "stream_optim_states.pt"  # what marks a stream checkpoint: Adam's moments, unsharded
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def host_bytes_per_parameter() -> int:
    """Host memory the engine keeps per parameter: fp32 master weight, fp32 gradient, Adam's two fp32
    moments. Per unit it adds two pinned staging slots for returning gradients (see StreamEngine)."""
    return 4 + 4 + 4 + 4


def is_stream_checkpoint(tag_dir: Path) -> bool:
    return (tag_dir / OPTIMIZER_STATES).exists()


class _Head(nn.Module):
    """The final norm and the (tied) output projection, called as one unit; the stock modules, not copies."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))


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

    def load_checkpoint(self, folder, tag: str | None = None, load_module_strict: bool = True) -> tuple[str, dict]:
        """Restores a stream checkpoint in full, or a DeepSpeed one's weights (see the module docstring); `tag`
        as DeepSpeed's: default, the one `latest` names."""
        self._finish_pending_step()  # or a step still in flight would write over what is loaded
        folder = Path(folder)
        tag = tag or (folder / "latest").read_text().strip()
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
