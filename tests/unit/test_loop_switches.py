"""Each `loop:` switch (solo.train.config.LoopConfig) held to the plain computation, on the CPU: the chunked
cross-entropy and a model made to use it (solo.train.loss) against transformers' loss, `torch.compile` against
eager, fused AdamW against the default one. Liger kernel's fused loss needs CUDA: tests/gpu/test_fused_loss.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaForCausalLM

from solo.errors import SoloError
from solo.train.loss import linear_cross_entropy, use_fast_loss
from solo.train.presets import llama_config

TOKENIZER_VOCAB, PADDED_VOCAB = 90, 101  # weight rows past the tokenizer's vocabulary are never targets
BATCH, SEQ, HIDDEN = 4, 13, 32  # 52 tokens: chunks of 7 or 8 leave a remainder
MODEL_VOCAB, MODEL_SEQ = 250, 16


def head_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final hidden states, a head's weight (padded rows included) and labels with -100 sprinkled in."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(BATCH, SEQ, HIDDEN, generator=generator).to(dtype)
    weight = (torch.randn(PADDED_VOCAB, HIDDEN, generator=generator) * 0.3).to(dtype)
    labels = torch.randint(0, TOKENIZER_VOCAB, (BATCH, SEQ), generator=generator)
    labels[torch.rand(BATCH, SEQ, generator=generator) < 0.25] = -100
    labels[0, :4] = -100  # a prompt, as fine-tuning masks it
    return hidden, weight, labels


def loss_and_grads(kind: str, hidden, weight, labels, **options) -> tuple[torch.Tensor, ...]:
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(hidden, weight, labels, kind=kind, **options)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


# One chunk for the whole batch, several that leave a remainder, one token a chunk.
@pytest.mark.parametrize("chunk_tokens", [8192, 7, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_and_gradients_equal_plain(dtype, chunk_tokens):
    hidden, weight, labels = head_inputs(dtype)
    plain = loss_and_grads("plain", hidden, weight, labels)
    chunked = loss_and_grads("chunked", hidden, weight, labels, chunk_tokens=chunk_tokens)
    # bf16: each chunk's weight gradient is rounded to bf16 before the fp32 sum, the plain one once.
    tolerance = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}
    for name, expected, actual in zip(("loss", "hidden's gradient", "weight's gradient"), plain, chunked):
        assert actual.dtype == expected.dtype, name
        torch.testing.assert_close(actual, expected, **tolerance, msg=lambda m, name=name: f"{name}: {m}")
    assert chunked[0].dtype == torch.float32 and chunked[0].dim() == 0
    # The padded rows learn only from the softmax (pushed down), as in the plain computation.
    assert (chunked[2][TOKENIZER_VOCAB:].float().abs().sum(dim=1) > 0).all()


def test_chunked_loss_scales_by_the_incoming_gradient():
    hidden, weight, labels = head_inputs(torch.float32)
    _, hidden_grad, weight_grad = loss_and_grads("chunked", hidden, weight, labels, chunk_tokens=8)
    hidden, weight = hidden.requires_grad_(), weight.requires_grad_()
    (linear_cross_entropy(hidden, weight, labels, chunk_tokens=8) * 2.5).backward()
    torch.testing.assert_close(hidden.grad, hidden_grad * 2.5)
    torch.testing.assert_close(weight.grad, weight_grad * 2.5)


def test_every_target_ignored_gives_zero_where_transformers_gives_nan():
    hidden, weight, _ = head_inputs(torch.float32)
    ignored = torch.full((BATCH, SEQ), -100)
    loss, hidden_grad, weight_grad = loss_and_grads("chunked", hidden, weight, ignored, chunk_tokens=7)
    assert loss.item() == 0.0
    assert not hidden_grad.any() and not weight_grad.any()
    assert loss_and_grads("plain", hidden, weight, ignored)[0].isnan()  # the documented difference


class LargestOutput(TorchDispatchMode):
    """Records the most elements any operation's output had (forward and backward alike)."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.most = max(self.most, tensor.numel())
        return out


@pytest.mark.parametrize("kind, holds_whole_batch", [("plain", True), ("chunked", False)])
def test_only_plain_holds_the_whole_batch_logits(kind, holds_whole_batch):
    hidden, weight, labels = head_inputs(torch.float32)
    chunk_tokens = 8
    with LargestOutput() as probe:
        loss_and_grads(kind, hidden, weight, labels, chunk_tokens=chunk_tokens)
    whole_batch_logits, weight_size = BATCH * SEQ * PADDED_VOCAB, PADDED_VOCAB * HIDDEN
    assert whole_batch_logits > weight_size  # so that the logits would be the largest tensor
    if holds_whole_batch:  # the probe sees a [B·T, V] tensor where there is one
        assert probe.most >= whole_batch_logits
    else:  # the largest: the weight's gradient, then a chunk's logits
        assert probe.most == max(chunk_tokens * PADDED_VOCAB, weight_size)


def tiny_llama() -> LlamaForCausalLM:
    """The demo shape cut to two decoder layers, seeded; its embedding padded past the tokenizer's vocabulary."""
    config = llama_config("demo", vocab_size=MODEL_VOCAB + 6, seq_len=MODEL_SEQ)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def batch(packed: bool) -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, MODEL_VOCAB, (2, MODEL_SEQ), generator=generator)
    labels = input_ids.clone()
    labels[0, :5] = -100
    inputs = {"input_ids": input_ids, "labels": labels, "use_cache": False}
    if packed:  # two conversations in each row, as solo.train.sft packs them
        inputs["position_ids"] = torch.cat([torch.arange(6), torch.arange(MODEL_SEQ - 6)]).repeat(2, 1)
        labels[:, 6] = -100  # the first conversation's last token (5) is not taught the second's first
    return inputs


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in model.named_parameters()}


def train_pass(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), gradients(model)


@pytest.mark.parametrize("packed", [False, True])
def test_use_fast_loss_keeps_the_models_loss_and_gradients(packed):
    stock, fast = tiny_llama(), tiny_llama()
    use_fast_loss(fast, "chunked", chunk_tokens=9)
    inputs = batch(packed)
    assert fast(**inputs).logits is None
    expected_loss, expected_grads = train_pass(stock, inputs)
    loss, grads = train_pass(fast, inputs)
    torch.testing.assert_close(loss, expected_loss)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=lambda m, name=name: f"{name}: {m}")
    without_labels = {key: value for key, value in inputs.items() if key != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(fast(**without_labels).logits, stock(**without_labels).logits)


def test_use_fast_loss_changes_the_instance_only(tmp_path):
    model = tiny_llama()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    use_fast_loss(model, "chunked", chunk_tokens=9)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert type(model).forward is LlamaForCausalLM.forward and tiny_llama().forward.__func__ is LlamaForCausalLM.forward
    copied = copy.deepcopy(model)
    assert copied.forward.__self__ is copied  # the copy computes with its own weights
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    inputs = {key: value for key, value in batch(packed=False).items() if key != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_use_fast_loss_refuses_a_model_of_another_layout():
    class HeadWithBias(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.lm_head = torch.nn.Identity(), torch.nn.Linear(4, 8)

    with pytest.raises(SoloError, match="Llama-style"):
        use_fast_loss(HeadWithBias(), "chunked", chunk_tokens=64)


@pytest.fixture
def fresh_compiler():
    torch.compiler.reset()
    counters.clear()
    # A training engine built earlier in this process on the CPU may have set the process-wide stance to eager.
    with torch.compiler.set_stance("default"):
        yield
    torch.compiler.reset()  # compiled graphs hold on to their models; the next test starts clean


def test_compiled_model_equals_eager(fresh_compiler):
    """The model with its fast loss, compiled as the loop compiles it: the decoder is transformers' own code either
    way, and the chunked loss's autograd.Function is traced with it. A single case, as compiling costs CI time."""
    eager = tiny_llama()
    use_fast_loss(eager, "chunked", chunk_tokens=9)
    inputs = batch(packed=False)
    expected_loss, expected_grads = train_pass(eager, inputs)
    compiled = torch.compile(eager, dynamic=False)  # the default inductor backend
    loss, _ = train_pass(compiled, inputs)
    grads = gradients(eager)  # the same parameters, under their own names
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_fused_adamw_takes_the_default_adamws_steps():
    models = {"foreach": tiny_llama(), "fused": tiny_llama()}
    optimizers = {kind: torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, **{kind: True})
                  for kind, model in models.items()}
    for step in range(3):
        inputs = batch(packed=step == 1)
        for kind, model in models.items():
            train_pass(model, inputs)
            optimizers[kind].step()
    fused, foreach = dict(models["fused"].named_parameters()), dict(models["foreach"].named_parameters())
    assert any(not torch.equal(param, tiny_llama().state_dict()[name]) for name, param in fused.items())
    for name, param in fused.items():
        torch.testing.assert_close(param, foreach[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
