"""The causal LM's cross-entropy from the final hidden states and the head's weight, without ever holding the
whole batch's fp32 logits (`loop.loss`, solo.train.config.LoopConfig).

transformers computes the loss from the whole batch's logits, upcast to fp32: B·T × V × 4 bytes, 4 GiB for
32k tokens of a 32k vocabulary, plus as much again for their gradient, which is often the largest tensor of a
step. Here the head's matmul and the cross-entropy run a chunk of tokens at a time (the largest transient is
chunk × V fp32), or in Liger kernel's fused Triton kernels; either way the loss and the gradients equal
transformers' within float tolerance (tests/unit/test_loop_switches.py).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from solo.errors import SoloError

IGNORE_INDEX = -100  # transformers' label for a position that is not learned
LOSS_KINDS = ("plain", "chunked", "fused")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, kind: str = "chunked",
                         chunk_tokens: int = 8192) -> torch.Tensor:
    """The mean cross-entropy of the logits `hidden @ weight.T` over the targets of `labels` that are not -100,
    as transformers' ForCausalLMLoss computes it (without num_items_in_batch): a 0-dim fp32 tensor that autograd
    differentiates to `hidden` and `weight`.

    hidden: [B, T, h], after the final norm. weight: [V, h], the head's (rows past the tokenizer's vocabulary
    included: they take part in the softmax, as in the plain computation). labels: [B, T], unshifted (position t
    predicts label t+1). kind: "plain" (transformers' loss on the full logits: the reference), "chunked"
    (`chunk_tokens` tokens at a time) or "fused" (Liger kernel; CUDA and Triton).

    Where every target is ignored, "chunked" gives a loss of 0 and zero gradients; transformers' mean (and so
    "plain") gives nan there, which would poison the weights at the next optimizer step.
    """
    if kind == "plain":
        return ForCausalLMLoss(F.linear(hidden, weight), labels, vocab_size=weight.shape[0])
    # Shifted as transformers shifts them: the last position of each row predicts nothing (-100). Keeping its
    # row rather than slicing it off lets `hidden` be flattened as a view, not copied.
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    if kind == "chunked":
        return ChunkedLinearCrossEntropy.apply(flat_hidden, weight, targets, chunk_tokens)
    if kind == "fused":
        try:
            # An optional dependency (Triton kernels, CUDA only): imported here so that solo runs without it.
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            raise SoloError("loop.loss: fused needs Liger kernel (pip install liger-kernel): "
                            "set loop.loss: chunked") from None
        loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean")
        return loss(weight, flat_hidden, targets).float()
    raise ValueError(f"loss kind {kind!r}: expected one of {', '.join(LOSS_KINDS)}")


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T` a chunk of tokens at a time, its gradients computed in the same pass.

    Each chunk's logits are computed in the inputs' dtype (bf16 on a GPU, as the head computes them), upcast to
    fp32 for the log-softmax, and turned at once into their gradient (softmax − one-hot, over the number of
    targets), which is multiplied through the head's matmul and dropped: nothing of size tokens × V outlives its
    chunk. Backward only scales the stored gradients by the incoming one (this loss is a leaf of the graph:
    nothing is differentiated through it twice).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_tokens: int) -> torch.Tensor:
        want_hidden_grad, want_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        kept = targets != IGNORE_INDEX
        # A tensor, not a Python number: reading the count would make the host wait for the device.
        per_target = 1.0 / kept.sum().clamp(min=1).to(torch.float32)
        safe_targets = torch.where(kept, targets, 0)  # ignored rows gather column 0, then weigh nothing
        grad_hidden = torch.empty_like(hidden) if want_hidden_grad else None
        # Summed over the chunks in fp32; cast to the weight's dtype once, at the end.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if want_weight_grad else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            end = min(start + chunk_tokens, hidden.shape[0])
            chunk_hidden, chunk_kept = hidden[start:end], kept[start:end]
            chunk_targets = safe_targets[start:end, None]
            logits = (chunk_hidden @ weight.T).float()
            log_normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)
            target_logits = logits.gather(1, chunk_targets)
            loss_sum += torch.where(chunk_kept[:, None], log_normalizer - target_logits, 0.0).sum()
            if not (want_hidden_grad or want_weight_grad):
                continue
            grad_logits = logits.sub_(log_normalizer).exp_()  # the softmax, in the logits' memory
            grad_logits.scatter_add_(1, chunk_targets, -chunk_kept[:, None].to(grad_logits.dtype))
            grad_logits.mul_((chunk_kept * per_target)[:, None])
            grad_logits = grad_logits.to(hidden.dtype)  # as the plain loss's gradient reaches the head's matmul
            if want_hidden_grad:
                grad_hidden[start:end] = grad_logits @ weight
            if want_weight_grad:
                grad_weight += grad_logits.T @ chunk_hidden
        if want_weight_grad:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss_sum * per_target

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None


def use_fast_loss(model: nn.Module, kind: str, chunk_tokens: int) -> None:
    """Make a Llama-style causal LM compute its training loss with `linear_cross_entropy(kind)`: after this,
    `model(input_ids=…, labels=…, …)` returns an output whose `.loss` is that loss and whose `.logits` is None.

    Why: transformers' loss upcasts the whole batch's logits to fp32, which for a small model with a 32k
    vocabulary is the largest tensor of the step and much of its memory traffic.

    The model must hold its decoder at `model.model` (returning `last_hidden_state` after the final norm) and its
    head at `model.lm_head`, a Linear without bias (a stock LlamaForCausalLM, and the many models laid out as it
    is); others are refused. Only this instance changes (its `forward`): its class, parameters and state_dict are
    untouched, so saving, DeepSpeed's wrapping (`module(**inputs)`) and `torch.compile(model)` work as before.
    A call without labels, or that this fast path does not take (positional arguments, num_items_in_batch,
    logits_to_keep, shift_labels), goes to the stock forward, whose result is the same. kind "plain" leaves the
    model as it is: its stock forward is the plain computation.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind {kind!r}: expected one of {', '.join(LOSS_KINDS)}")
    head = getattr(model, "lm_head", None)
    if not (isinstance(getattr(model, "model", None), nn.Module) and isinstance(head, nn.Linear)
            and head.bias is None):
        raise SoloError(f"loop.loss: {kind} needs a Llama-style model (decoder at .model, a Linear head without bias "
                        f"at .lm_head), not {type(model).__name__}: set loop.loss: plain")
    if kind == "plain":
        return
    model.solo_loss = (kind, chunk_tokens)  # read by forward_with_linear_loss; plain data, so copies keep it
    model.forward = types.MethodType(forward_with_linear_loss, model)


# Keyword arguments of the stock forward that change what its loss means; with any of them the stock forward runs.
STOCK_LOSS_ARGUMENTS = ("num_items_in_batch", "shift_labels", "logits_to_keep")


@can_return_tuple
def forward_with_linear_loss(self, *args, labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
    """The causal LM's forward, with its loss from `linear_cross_entropy` and no logits (use_fast_loss binds it to
    a model). Defined here, not as a closure, so that a copied model's forward is bound to the copy."""
    stock_forward = type(self).forward
    if labels is None or args or any(name in kwargs for name in STOCK_LOSS_ARGUMENTS):
        return stock_forward(self, *args, labels=labels, **kwargs)
    kind, chunk_tokens = self.solo_loss
    outputs = self.model(**kwargs)
    loss = linear_cross_entropy(outputs.last_hidden_state, self.lm_head.weight, labels, kind=kind,
                                chunk_tokens=chunk_tokens)
    # The decoder's other outputs (cache, hidden states, attentions) pass through under their own names.
    passed = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
    return CausalLMOutputWithPast(loss=loss, logits=None, **passed)
