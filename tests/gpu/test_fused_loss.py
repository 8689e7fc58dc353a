"""The cross-entropies that never hold the whole batch's fp32 logits (solo.train.loss) on CUDA in bf16, as the
loop runs them there: Liger kernel's fused one ("fused", Triton) and the chunked one against transformers' loss.
tests/unit/test_loop_switches.py holds the chunked one to it on the CPU; these need a GPU (and Liger: pip install
liger-kernel) and skip, saying so, elsewhere."""

from __future__ import annotations

import pytest
import torch

from solo.train.fast_path import liger_available
from solo.train.loss import linear_cross_entropy, use_fast_loss
from tests.unit.test_loop_switches import batch, tiny_llama, train_pass

pytestmark = pytest.mark.gpu
NEEDS_VLLM = False  # tests/gpu/conftest.py skips the rest of tests/gpu where vLLM cannot run; these need none

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_liger = pytest.mark.skipif(not liger_available(), reason="needs Liger kernel, Triton and a CUDA GPU "
                                                               "(pip install liger-kernel)")

# A vocabulary that is no multiple of 64 or of a chunk, rows past the tokenizer's never targets, -100s sprinkled.
TOKENIZER_VOCAB, PADDED_VOCAB, TOKENS, HIDDEN = 1000, 1024 + 37, 4 * 257, 256


def assert_close_in_bf16(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Within bf16's rounding as a whole (the logits are rounded to bf16 before the fp32 softmax, the gradients
    before the head's matmuls, in another order in each implementation); a wrong gradient is off by its size."""
    actual, expected = actual.float(), expected.float()
    error = (actual - expected).norm() / expected.norm().clamp(min=1e-12)
    assert error < 2e-2, f"{name}: relative error {error:.2e}"


def loss_and_grads(kind: str, **options) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4, TOKENS // 4, HIDDEN, device="cuda", generator=generator, dtype=torch.bfloat16)
    weight = (torch.randn(PADDED_VOCAB, HIDDEN, device="cuda", generator=generator) * 0.05).bfloat16()
    labels = torch.randint(0, TOKENIZER_VOCAB, (4, TOKENS // 4), device="cuda", generator=generator)
    labels[torch.rand(labels.shape, device="cuda", generator=generator) < 0.25] = -100
    hidden.requires_grad_(), weight.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, labels, kind=kind, **options)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def assert_equal_to_plain(kind: str, **options) -> None:
    plain, other = loss_and_grads("plain"), loss_and_grads(kind, **options)
    for name, expected, actual in zip(("loss", "hidden's gradient", "weight's gradient"), plain, other):
        assert_close_in_bf16(actual, expected, name)


@needs_liger
def test_fused_loss_equals_plain():
    assert_equal_to_plain("fused")


@needs_cuda
def test_chunked_loss_equals_plain():
    assert_equal_to_plain("chunked", chunk_tokens=300)


@needs_liger
def test_model_with_fused_loss_keeps_its_loss_and_gradients():
    stock, fast = tiny_llama().cuda().bfloat16(), tiny_llama().cuda().bfloat16()
    use_fast_loss(fast, "fused", chunk_tokens=8192)
    inputs = {key: value.cuda() if isinstance(value, torch.Tensor) else value for key, value in batch(True).items()}
    expected_loss, expected_grads = train_pass(stock, inputs)
    loss, grads = train_pass(fast, inputs)
    assert_close_in_bf16(loss, expected_loss, "loss")
    for name, grad in grads.items():
        assert_close_in_bf16(grad, expected_grads[name], name)
