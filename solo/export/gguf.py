"""A Hugging Face Llama checkpoint as one GGUF file: what llama.cpp, Ollama and LM Studio load.

GGUF (the format of llama.cpp's gguf-py, written here with the `gguf` package) is a header of key-values (the
hyper-parameters under `llama.*`, the tokenizer under `tokenizer.*`), a table of tensors, then each tensor's
data, aligned. Tensors take llama.cpp's Llama names (token_embd, blk.N.attn_q, …, output_norm, output). The
weights stream from the checkpoint one tensor at a time, so a 7B model converts in the memory of its largest
tensor, not of the whole model.

llama.cpp rotates each head's query/key dimensions in adjacent pairs (0,1), (2,3), …; Hugging Face's Llama
rotates dimension i with i + head_dim/2. The rows of q_proj and k_proj are reordered to match
(`interleave_rotary_rows`), which changes nothing in what the model computes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType
from gguf.quants import quant_shape_to_byte_shape, quantize
from safetensors import safe_open

from solo.errors import SoloError
from solo.export.config import GgufQuant
from solo.export.vocab import GgufVocab, gguf_vocab

ARCHITECTURE = "llama"
# The quant → the type of a 2-D weight and the file type the header announces. Norms (1-D) are always f32.
QUANTS: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
Q8_0_BLOCK = 32  # values per q8_0 block (one f16 scale, 32 int8): a row must hold whole blocks

# Hugging Face name → GGUF name; {n} is the layer.
LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@dataclass(frozen=True)
class LlamaHyperparameters:
    """The hyper-parameters of a Hugging Face Llama (config.json) that llama.cpp reads under `llama.*`."""

    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    head_dim: int
    rope_freq_base: float
    rms_norm_eps: float
    vocab_size: int
    tied_embeddings: bool
    rope_scaling: dict = field(default_factory=dict)  # rope_type and its parameters; empty: plain RoPE

    @classmethod
    def read(cls, model_dir: Path) -> LlamaHyperparameters:
        file = model_dir / "config.json"
        if not file.is_file():
            raise SoloError(f"no Hugging Face model in {model_dir} (no config.json)")
        config = json.loads(file.read_text())
        architectures = config.get("architectures") or []
        if config.get("model_type") != "llama" or "LlamaForCausalLM" not in architectures:
            raise SoloError(f"{model_dir} holds a {config.get('model_type')} model ({', '.join(architectures) or 'no '}"
                            "architecture): GGUF export takes a Llama-architecture model (LlamaForCausalLM)")
        for bias in ("attention_bias", "mlp_bias"):
            if config.get(bias):
                raise SoloError(f"{model_dir}'s Llama has {bias}: GGUF export takes the stock Llama, without biases")
        heads = config["num_attention_heads"]
        # transformers ≥ 5 keeps RoPE's settings in rope_parameters; earlier ones in rope_theta and rope_scaling.
        rope = dict(config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10000.0),
                                                      **(config.get("rope_scaling") or {})})
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise SoloError(f"{model_dir}'s RoPE scaling is {rope_type!r}: GGUF export takes none, linear or llama3")
        return cls(
            context_length=config["max_position_embeddings"], embedding_length=config["hidden_size"],
            block_count=config["num_hidden_layers"], feed_forward_length=config["intermediate_size"],
            head_count=heads, head_count_kv=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rope_freq_base=float(rope.pop("rope_theta", 10000.0)), rms_norm_eps=config["rms_norm_eps"],
            vocab_size=config["vocab_size"], tied_embeddings=config.get("tie_word_embeddings", False),
            rope_scaling={} if rope_type == "default" else {"rope_type": rope_type, **rope},
        )


def interleave_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """q_proj/k_proj rows from Hugging Face's rotary layout (each head's first half rotates with its second half)
    to llama.cpp's (adjacent pairs rotate together): per head, rows [a0…a(d/2-1), b0…] become [a0, b0, a1, b1, …]."""
    rows, columns = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, columns).swapaxes(1, 2).reshape(rows, columns)


def llama3_rope_factors(hyper: LlamaHyperparameters) -> np.ndarray:
    """Llama 3's RoPE scaling as llama.cpp applies it: a divisor per rotary frequency (the `rope_freqs` tensor).
    Long wavelengths are slowed by `factor`, short ones kept, those between blended (Meta's Llama 3.1 recipe)."""
    scaling = hyper.rope_scaling
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    frequencies = hyper.rope_freq_base ** -(np.arange(0, hyper.head_dim, 2, dtype=np.float64) / hyper.head_dim)
    wavelengths = 2 * math.pi / frequencies
    smooth = np.clip((original / wavelengths - low) / (high - low), 0.0, 1.0)
    divisors = 1.0 / ((1 - smooth) / factor + smooth)   # 1 for short wavelengths, `factor` for long ones
    return divisors.astype(np.float32)


class Checkpoint:
    """A checkpoint's tensors by their Hugging Face names, read one at a time (safetensors, single or sharded,
    or a PyTorch .bin)."""

    def __init__(self, model_dir: Path, files: ExitStack):
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (model_dir / "model.safetensors").is_file():
            shards = ["model.safetensors"]
        else:
            shards = []
        self._where: dict[str, Callable[[], torch.Tensor]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for shard in shards:
            opened = files.enter_context(safe_open(str(model_dir / shard), framework="pt"))
            for name in opened.keys():
                self._shapes[name] = tuple(opened.get_slice(name).get_shape())
                self._where[name] = lambda opened=opened, name=name: opened.get_tensor(name)
        if not shards:
            bins = sorted(model_dir.glob("pytorch_model*.bin"))
            if not bins:
                raise SoloError(f"no weights in {model_dir} (model.safetensors or pytorch_model.bin)")
            for file in bins:  # mmap: a tensor's bytes are read when it is converted
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                for name, tensor in state.items():
                    self._shapes[name] = tuple(tensor.shape)
                    self._where[name] = lambda tensor=tensor: tensor

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def load(self, name: str) -> np.ndarray:
        return self._where[name]().to(torch.float32).numpy()


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the GGUF file: where it comes from, how it is reordered, what type it is stored as."""

    name: str
    shape: tuple[int, ...]                      # rows × columns, as numpy holds it
    qtype: GGMLQuantizationType
    read: Callable[[], np.ndarray]              # its float32 values, in llama.cpp's layout


def tensor_plan(checkpoint: Checkpoint, hyper: LlamaHyperparameters, quant: GgufQuant) -> list[PlannedTensor]:
    """Every tensor llama.cpp's Llama reads, in its order, with its type: `quant` for matrices whose rows hold
    whole q8_0 blocks (f16 for the others under q8_0, as llama.cpp's converter does), f32 for norms."""
    weight_type, _ = QUANTS[quant]
    names = set(checkpoint.names())
    sources = {"token_embd": "model.embed_tokens.weight"}
    for n in range(hyper.block_count):
        sources.update({f"blk.{n}.{gguf}": f"model.layers.{n}.{hf}.weight" for hf, gguf in LAYER_TENSORS.items()})
    sources["output_norm"] = "model.norm.weight"
    if not hyper.tied_embeddings:
        sources["output"] = "lm_head.weight"
    # Old checkpoints carry RoPE's inverse frequencies, which llama.cpp computes itself; a tied lm_head is the
    # embedding again.
    ignored = {n for n in names if n.endswith("rotary_emb.inv_freq")} | {"lm_head.weight"}
    unused = names - set(sources.values()) - ignored
    if unused:
        raise SoloError(f"the checkpoint has tensors a Llama does not: {', '.join(sorted(unused)[:4])}")
    missing = [source for source in sources.values() if source not in names]
    if missing:
        raise SoloError(f"the checkpoint lacks {', '.join(missing[:4])}: not a whole Llama")

    def planned(name: str, source: str) -> PlannedTensor:
        dims = checkpoint.shape(source)
        if name.endswith(("attn_q", "attn_k")):
            heads = hyper.head_count if name.endswith("attn_q") else hyper.head_count_kv
            read = lambda: interleave_rotary_rows(checkpoint.load(source), heads)  # noqa: E731
        else:
            read = lambda: checkpoint.load(source)  # noqa: E731
        qtype = weight_type if len(dims) == 2 else GGMLQuantizationType.F32
        if qtype == GGMLQuantizationType.Q8_0 and dims[-1] % Q8_0_BLOCK:
            qtype = GGMLQuantizationType.F16
        return PlannedTensor(f"{name}.weight", dims, qtype, read)

    plan = [planned(name, source) for name, source in sources.items()]
    if hyper.rope_scaling.get("rope_type") == "llama3":
        factors = llama3_rope_factors(hyper)
        plan.insert(1, PlannedTensor("rope_freqs.weight", factors.shape, GGMLQuantizationType.F32, lambda: factors))
    return plan


def _stored(planned: PlannedTensor) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and size in bytes the writer is told of a tensor before it is read: q8_0 as its bytes."""
    if planned.qtype == GGMLQuantizationType.Q8_0:
        byte_shape = quant_shape_to_byte_shape(planned.shape, planned.qtype)
        return byte_shape, np.dtype(np.uint8), math.prod(byte_shape)
    dtype = np.dtype(np.float16 if planned.qtype == GGMLQuantizationType.F16 else np.float32)
    return planned.shape, dtype, math.prod(planned.shape) * dtype.itemsize


def write_metadata(writer: GGUFWriter, hyper: LlamaHyperparameters, vocab: GgufVocab, name: str,
                   quant: GgufQuant) -> None:
    """The header's key-values: the file, the Llama's hyper-parameters (`llama.*`), the tokenizer."""
    writer.add_name(name)
    writer.add_file_type(QUANTS[quant][1])
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_vocab_size(hyper.vocab_size)
    writer.add_context_length(hyper.context_length)
    writer.add_embedding_length(hyper.embedding_length)
    writer.add_block_count(hyper.block_count)
    writer.add_feed_forward_length(hyper.feed_forward_length)
    writer.add_head_count(hyper.head_count)
    writer.add_head_count_kv(hyper.head_count_kv)
    if hyper.head_dim != hyper.embedding_length // hyper.head_count:
        writer.add_key_length(hyper.head_dim)
        writer.add_value_length(hyper.head_dim)
    writer.add_rope_dimension_count(hyper.head_dim)
    writer.add_rope_freq_base(hyper.rope_freq_base)
    if hyper.rope_scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hyper.rope_scaling["factor"])
    writer.add_layer_norm_rms_eps(hyper.rms_norm_eps)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for key, value in (("bos", vocab.bos_id), ("eos", vocab.eos_id), ("eot", vocab.eot_id), ("pad", vocab.pad_id),
                       ("unk", vocab.unk_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def stop_ids(model_dir: Path) -> list[int]:
    """The ids generation_config.json says end a generation (none when it says nothing)."""
    file = model_dir / "generation_config.json"
    eos = json.loads(file.read_text()).get("eos_token_id") if file.is_file() else None
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@dataclass(frozen=True)
class GgufExport:
    """What `write_gguf` wrote: the file, and what a Modelfile and a log line need to know."""

    path: Path
    bytes: int
    tensors: int
    quant: str
    vocab: GgufVocab


def write_gguf(model_dir: Path, output: Path, quant: GgufQuant = "f16", name: str | None = None) -> GgufExport:
    """Convert the Hugging Face Llama in `model_dir` into the GGUF file `output`, its weights stored as `quant`.
    It is written under a temporary name and renamed when whole; a model it cannot convert faithfully (another
    architecture, a tokenizer llama.cpp would split differently) is refused with a SoloError saying why."""
    model_dir = Path(model_dir)
    hyper = LlamaHyperparameters.read(model_dir)
    vocab = gguf_vocab(model_dir, hyper.vocab_size, stop_ids(model_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{output.name}.partial-*"):  # left by a killed export
        stale.unlink()
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    with ExitStack() as files:
        plan = tensor_plan(Checkpoint(model_dir, files), hyper, quant)
        writer = GGUFWriter(partial, ARCHITECTURE)
        try:
            write_metadata(writer, hyper, vocab, name or model_dir.name, quant)
            for planned in plan:  # the table of tensors comes first, so each tensor's size is known unread
                writer.add_tensor_info(planned.name, *_stored(planned), raw_dtype=planned.qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for planned in plan:  # one tensor in memory at a time
                writer.write_tensor_data(quantize(planned.read(), planned.qtype))  # q8_0: gguf's own quantizer
            writer.close()
            os.replace(partial, output)
        finally:
            writer.close()
            partial.unlink(missing_ok=True)
    return GgufExport(output, output.stat().st_size, len(plan), quant, vocab)
