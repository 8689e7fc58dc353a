"""Model presets: stock Hugging Face Llama (RoPE, SwiGLU, RMSNorm, GQA), no custom model code.

The model knows nothing of parallelism or offload; the training strategy is applied from outside.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


PRESETS: dict[str, Preset] = {
    # Small enough to pretrain in minutes on two CPU cores, big enough to learn real text.
    "demo": Preset(hidden=192, layers=4, heads=6, kv_heads=2, intermediate=512),
    "125m": Preset(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048),
    "350m": Preset(hidden=1024, layers=24, heads=16, kv_heads=4, intermediate=2816),
    "1.3b": Preset(hidden=2048, layers=24, heads=16, kv_heads=8, intermediate=5504),
    "2.7b": Preset(hidden=2560, layers=32, heads=32, kv_heads=8, intermediate=6912),
    "7b": Preset(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=11008),
}


def padded_vocab(vocab: int, multiple: int) -> int:
    """The embedding's rows for a tokenizer of `vocab` tokens: rounded up to a multiple of `multiple`, so the
    head's matmul has shapes the GPU's tensor cores take whole (nanoGPT's 50257 → 50304). The rows past the
    vocabulary are never a target; the saved model drops them (solo.train.save)."""
    return -(-vocab // multiple) * multiple


def llama_config(preset: str, vocab_size: int, seq_len: int,
                 eos_token_id: int | list[int] | None = None) -> LlamaConfig:
    p = PRESETS[preset]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        max_position_embeddings=seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
    )


def parameter_count(config: LlamaConfig) -> int:
    """Parameters of a Llama model, counted from its shape (tied embeddings counted once); of another causal LM
    being fine-tuned, about as many (a config without key/value heads or a feed-forward width has as many
    key/value heads as query heads and 4 × hidden, as GPT-2's)."""
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    head_dim = h // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    attention = h * h * 2 + 2 * h * kv_heads * head_dim
    mlp = 3 * h * (getattr(config, "intermediate_size", None) or 4 * h)
    per_layer = attention + mlp + 2 * h
    head = 0 if config.tie_word_embeddings else v * h
    return v * h + layers * per_layer + h + head


def flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6·N over the N parameters that take part in a matmul (forward 2N,
    backward 4N), plus 12·L·h·T for the attention scores and their use (PaLM, appendix B)."""
    # With tied embeddings the input lookup costs nothing but the output projection is a full
    # matmul, so the matmul parameters are exactly the counted parameters either way.
    untied_input_embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    matmul_params = parameter_count(config) - untied_input_embedding
    return 6 * matmul_params + 12 * config.num_hidden_layers * config.hidden_size * seq_len
