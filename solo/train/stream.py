"""The layer-streaming training engine (`engine: stream`): host memory holds the model, the device is a scratchpad.

The fp32 master weights, their gradients and Adam's two moments live in host memory (16 bytes per parameter),
and under bf16 a packed bf16 copy of the weights beside them (2 bytes more): one flat buffer per unit (the
embedding, each decoder layer, the final norm with the tied head), pinned on CUDA so copies are asynchronous.
The embedding, the final norm and the head stay on the device for the whole run in the compute dtype; the
decoder layers travel, each in one contiguous copy of its packed weights, into one of two device slots on a
copy-in stream while the layer before computes in the other (double buffering).

`train_step(micro_batches)` does a whole optimizer step, moving each layer's weights to the device twice, once
for forward and once for backward, however many micro-batches the step accumulates:
- Forward embeds every micro-batch, then walks the layers once, each layer running every micro-batch while its
  weights are on the device, keeping each micro-batch's input to each layer (its boundary activation; on CUDA in
  device memory up to a budget and beyond it in pinned host memory: solo.train.stream_activations).
- The head runs per micro-batch, its loss (`solo.train.loss.linear_cross_entropy`, the kind `loop.loss`
  resolves to) and its backward at once, so no logits outlive it; what it keeps is the gradient at its input.
- Backward walks the layers in reverse once, each recomputing every micro-batch from its boundary activation
  and back-propagating it, its gradients summed over the micro-batches on the device in fp32 and copied to host
  once on a copy-out stream; a background thread adds them into the host fp32 gradients as each copy lands.
  The embedding's, norm's and head's gradients sum on the device over the step and go to host once at its end.
- Then the host gradients are averaged over data-parallel workers (gloo, on host memory) and their global norm
  sets the clipping; DeepSpeed's CPU Adam (AdamW) steps the master weights a unit at a time, in forward order,
  on a background thread (`OverlappedAdam`), which refreshes each unit's packed copy right after updating it,
  and `train_step` returns at once: the next step's forward fetches each unit as soon as it is updated, so the
  device computes the first layers while the host still updates the last ones.
Where `loop.compile` is on (CUDA), one decoder layer's compute (a functional call with the layer's weights) is
compiled once with torch.compile and serves every layer. Whatever reads the weights from outside (`module`,
`eval()`, `save_checkpoint`, `load_checkpoint`) first waits for the step in flight, and an error on a background
thread is raised in the training thread. On the host (`device: cpu`) the "device" is host memory: the streams are
torch.cpu's no-op stand-ins and nothing is copied (a unit's device weights are its packed host buffer), while
the slots, events, boundaries and gradient returns run the same code as on a GPU.

`solo.train.loop.train_worker` calls `engine.train_step(micro_batches)` once a step (the micro-batches already
on the device, as `model_inputs` builds them); `engine(**inputs)` evaluates without gradients a micro-batch at a
time; `engine.module`, `train()`/`eval()`, `save_checkpoint`, `load_checkpoint` and `optimizer` are as DeepSpeed's.

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

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

from solo.errors import SoloError
from solo.train.config import TrainConfig
from solo.train.fast_path import Switches
from solo.train.loss import linear_cross_entropy
from solo.train.stream_activations import Boundaries, device_budget_bytes
from solo.train.stream_adam import OverlappedAdam
from solo.train.stream_transfers import DeviceStreams, GradientReturn, ResidentWeights, Unit, WeightStream, lay_out

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file name for a checkpoint's whole module
OPTIMIZER_STATES = "stream_optim_states.pt"  # what marks a stream checkpoint: Adam's moments, unsharded
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def host_bytes_per_parameter(precision: str = "fp32") -> int:
    """Host memory the engine keeps per parameter: fp32 master weight, fp32 gradient, Adam's two fp32
    moments, and under bf16 the packed bf16 copy the device receives. Besides: on CUDA two pinned fp32
    staging slots of the largest unit for returning gradients, and the boundary activations that do not fit
    the device (solo.train.stream_activations)."""
    return 4 + 4 + 4 + 4 + (COMPUTE_DTYPES[precision].itemsize if precision != "fp32" else 0)


def is_stream_checkpoint(tag_dir: Path) -> bool:
    return (tag_dir / OPTIMIZER_STATES).exists()


class _Head(nn.Module):
    """The final norm and the (tied) output projection, called as one unit; the stock modules, not copies."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, hidden: torch.Tensor, project: bool = True) -> torch.Tensor:
        return self.lm_head(self.norm(hidden)) if project else self.norm(hidden)


@dataclass
class _MicroBatch:
    """One micro-batch's inputs and what every layer's forward needs besides the hidden states."""

    input_ids: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor
    mask: object = None
    position_embeddings: tuple | None = None


class StreamEngine:
    """Trains a stock LlamaForCausalLM whose weights stay in host memory, streaming its decoder layers through
    `device`. Host memory: `host_bytes_per_parameter(precision)` per parameter, plus (on CUDA) two pinned fp32
    staging slots of the largest unit and the boundary activations beyond the device budget. Device memory: the
    embedding, final norm and head in the compute dtype with their fp32 gradients, two slots of the largest
    layer in the compute dtype, two fp32 gradient accumulators of it, the boundary activations up to the budget
    (solo.train.stream_activations), each micro-batch's gradient at the current boundary, and one layer's
    recomputed activations of one micro-batch (on a CPU all of it is host memory, without slots)."""

    def __init__(self, model, config: TrainConfig, device: torch.device, accumulation: int, switches: Switches):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # imported where used: DeepSpeed's import takes seconds

        if config.strategy.precision not in COMPUTE_DTYPES:
            raise SoloError(f"engine: stream computes in fp32 or bf16, not {config.strategy.precision}")
        # `module` (below) hands the model out once the optimizer step in flight is done; inside, `_model`.
        self._model, self.config, self.device, self.accumulation = model, config, device, accumulation
        self.switches = switches
        self.training = True
        self.compute_dtype = COMPUTE_DTYPES[config.strategy.precision]
        self.streams = DeviceStreams(device)
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        # Gradients are all-reduced where they live, in host memory: gloo (NCCL reaches device memory only).
        self.host_group = None
        if self.world > 1 and dist.get_backend() != "gloo":
            self.host_group = dist.new_group(backend="gloo")

        llama = model.model
        self.embedding = Unit.of(llama.embed_tokens)
        self.layers = [Unit.of(layer) for layer in llama.layers[:model.config.num_hidden_layers]]
        self.head = Unit.of(_Head(llama.norm, model.lm_head))
        self.units = [self.embedding, *self.layers, self.head]  # forward order
        self.grads = lay_out(self.units, self.streams, self.compute_dtype)
        self.params = [p for unit in self.units for p in unit.owned]  # each tied weight once
        if self.world > 1:
            for unit in self.units:
                dist.broadcast(unit.master, src=0, group=self.host_group)
                unit.repack()
        o = config.optim
        self.optimizer = DeepSpeedCPUAdam(self.params, lr=o.lr, betas=(o.beta1, o.beta2),
                                          weight_decay=o.weight_decay, adamw_mode=True)
        self.adam = OverlappedAdam(self.optimizer, self.units)
        layer_numel = max(unit.numel() for unit in self.layers)
        self.weights = WeightStream(self.streams, layer_numel, self.compute_dtype, self.adam)
        self.resident = ResidentWeights(self.streams, [self.embedding, self.head], self.compute_dtype, self.adam)
        # The resident units' gradients, summed on the device over a step; a tied weight's views are one tensor.
        self.resident_grads = {unit: torch.zeros(unit.numel(), dtype=torch.float32, device=device)
                               for unit in (self.embedding, self.head)}
        self._resident_grad = {id(p): view for unit, flat in self.resident_grads.items()
                               for p, view in zip(unit.owned, unit.split(flat))}
        self.gradients = GradientReturn(self.streams, layer_numel, max(unit.numel() for unit in self.units))
        # RoPE's inverse frequencies (a buffer, no weights) stay on the device for good.
        self.rotary = type(llama.rotary_emb)(config=model.config).to(device)
        self.boundaries = Boundaries(self.streams, device_budget_bytes(self.streams))
        self._compiled_layer = None
        if switches.compile and self.streams.cuda:
            # Every layer has the first one's structure, so one graph serves all of them, the layer's weights
            # passed in (compiling each layer's own module would compile it once per layer). Never on the CPU.
            template = self.layers[0].module
            self._compiled_layer = torch.compile(functools.partial(_layer_forward, template))
        self.micro_steps = self.global_steps = 0

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

    @torch.no_grad()
    def __call__(self, input_ids, labels=None, position_ids=None, attention_mask=None, use_cache=False):
        """Logits and loss of one micro-batch, without gradients (evaluation): training goes through
        `train_step`."""
        batch = self._micro_batch(input_ids, labels, position_ids)
        hidden = self._embed(batch, self.resident.get(self.embedding), attention_mask)
        for unit, weights in self.weights.stream(self.layers):
            hidden = self._run_layer(unit.module, weights, hidden, batch)
        logits = functional_call(self.head.module, self.resident.get(self.head), (hidden,))
        loss = None if labels is None else self._model.loss_function(
            logits=logits, labels=labels, vocab_size=self._model.config.vocab_size)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def train_step(self, micro_batches: list[dict]) -> torch.Tensor:
        """Forward, backward and the optimizer step of one global batch, `accumulation` micro-batches here (each
        a dict of the model's inputs, on the device); returns the sum of their mean losses, detached, 0-dim, on
        the device. The optimizer step runs on in the background when it returns."""
        if len(micro_batches) != self.accumulation:
            raise ValueError(f"train_step takes the step's {self.accumulation} micro-batches, "
                             f"not {len(micro_batches)}")
        for flat in self.resident_grads.values():
            flat.zero_()
        self.boundaries.start_step()
        batches = [self._micro_batch(b["input_ids"], b["labels"], b.get("position_ids")) for b in micro_batches]
        embedding = self.resident.get(self.embedding)
        with torch.no_grad():
            hidden = [self._embed(batch, embedding, None) for batch in batches]
            for i, (unit, weights) in enumerate(self.weights.stream(self.layers)):
                for m, batch in enumerate(batches):
                    self.boundaries.put((i, m), hidden[m])
                    hidden[m] = self._run_layer(unit.module, weights, hidden[m], batch)
        losses, grads_out = [], []  # grads_out[m]: the loss's gradient at micro-batch m's current boundary
        for m, batch in enumerate(batches):
            loss, grad = self._head_step(hidden[m], batch)
            hidden[m] = None  # the last layer's output is not needed again
            losses.append(loss)
            grads_out.append(grad)
        self._backward_layers(batches, grads_out)
        self._backward_embedding(batches, grads_out)
        self.gradients.flush()  # every gradient of the step is in host memory now
        self._optimizer_step()
        return torch.stack(losses).sum()

    def _backward_layers(self, batches: list[_MicroBatch], grads_out: list[torch.Tensor]) -> None:
        """Backward through the decoder layers, last first, each fetched once for all micro-batches."""
        order = [(i, m) for i in reversed(range(len(self.layers))) for m in range(len(batches))]
        self.boundaries.prefetch(order[0])
        for unit, weights in self.weights.stream(list(reversed(self.layers))):
            summed = self.gradients.accumulator(unit.numel())
            summed_views = unit.split(summed)
            for m, batch in enumerate(batches):
                key = order.pop(0)
                boundary = self.boundaries.take(key).requires_grad_(True)
                if order:
                    self.boundaries.prefetch(order[0])  # the next one's copy back overlaps this one's compute
                leaves = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
                with torch.enable_grad():
                    out = self._run_layer(unit.module, leaves, boundary, batch)
                    grads_out[m], *grads = torch.autograd.grad(out, [boundary, *leaves.values()], grads_out[m])
                for total, grad in zip(summed_views, grads):
                    total.add_(grad)
            self.gradients.send(summed, unit.grad)

    def _backward_embedding(self, batches: list[_MicroBatch], grads_out: list[torch.Tensor]) -> None:
        weights = self.resident.get(self.embedding)
        for batch, grad_out in zip(batches, grads_out):
            leaves = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
            with torch.enable_grad():
                out = functional_call(self.embedding.module, leaves, (batch.input_ids,))
                grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
            self._add_resident_grads(self.embedding, grads)
        for unit, flat in self.resident_grads.items():
            self.gradients.send(flat, unit.grad)

    def _optimizer_step(self) -> None:
        """Average over workers, clip and step (as DeepSpeed does), the optimizer step starting on the
        background thread with the learning rate set now."""
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
        self.streams.settle_copies_in()  # the optimizer thread rewrites the packed buffers they read
        self.adam.start(grad_divisor)  # it zeroes each unit's gradients once the unit is updated
        self.resident.mark_stale()
        self.micro_steps += self.accumulation
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
        self._refresh_from_masters()
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

    def _refresh_from_masters(self) -> None:
        """After the masters were written from outside (a checkpoint loaded): their packed and device copies."""
        for unit in self.units:
            unit.repack()
        self.resident.mark_stale()

    # ------------------------------------------------------------ pieces

    def _micro_batch(self, input_ids, labels, position_ids) -> _MicroBatch:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        return _MicroBatch(input_ids, labels, position_ids)

    def _embed(self, batch: _MicroBatch, weights: dict, attention_mask) -> torch.Tensor:
        hidden = functional_call(self.embedding.module, weights, (batch.input_ids,))
        # Packed rows restart their position ids; transformers then builds a block-diagonal mask.
        batch.mask = create_causal_mask(config=self._model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                        cache=None, position_ids=batch.position_ids)
        batch.position_embeddings = self.rotary(hidden, position_ids=batch.position_ids)
        return hidden

    def _head_step(self, hidden: torch.Tensor, batch: _MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch's loss and the head's backward at once, so no logits outlive it (the loss kind may
        never hold them whole). Returns the loss (detached) and its gradient at the head's input, scaled by
        1 / accumulation as DeepSpeed scales each micro-batch's loss."""
        weights = self.resident.get(self.head)
        with torch.enable_grad():
            head_input = hidden.detach().requires_grad_(True)
            leaves = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
            normed = functional_call(self.head.module, leaves, (head_input,), {"project": False})
            loss = linear_cross_entropy(normed, leaves["lm_head.weight"], batch.labels, kind=self.switches.loss,
                                        chunk_tokens=self.switches.loss_chunk_tokens)
            grad_in, *grads = torch.autograd.grad(loss / self.accumulation, [head_input, *leaves.values()])
        self._add_resident_grads(self.head, grads)
        return loss.detach(), grad_in

    def _add_resident_grads(self, unit: Unit, grads) -> None:
        for (_, param), grad in zip(unit.params, grads):
            self._resident_grad[id(param)].add_(grad)  # a tied weight sums both of its uses

    def _run_layer(self, module: nn.Module, weights: dict, hidden: torch.Tensor, batch: _MicroBatch) -> torch.Tensor:
        """One decoder layer's forward with these weights (compiled where `loop.compile` is on, on CUDA)."""
        inputs = (weights, hidden, batch.mask, batch.position_embeddings, batch.position_ids)
        if self._compiled_layer is not None:
            return self._compiled_layer(*inputs)
        return _layer_forward(module, *inputs)


def _layer_forward(module: nn.Module, weights: dict, hidden: torch.Tensor, mask, position_embeddings: tuple,
                   position_ids: torch.Tensor) -> torch.Tensor:
    return functional_call(module, weights, (hidden,), {
        "attention_mask": mask, "position_embeddings": position_embeddings, "position_ids": position_ids})
