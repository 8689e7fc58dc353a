"""GGUF export, read back with gguf's own GGUFReader: the Llama hyper-parameters, the tokenizer, and every weight
equal to the checkpoint's (f32 exactly, f16 to fp16 rounding, q8_0 within its error), q/k in llama.cpp's rotary
order; and the models it must refuse, refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import dequantize
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from solo.cli.main import main
from solo.export.gguf import LAYER_TENSORS, write_gguf
from solo.export.vocab import portable_chat_template

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café №42?"},
                {"role": "assistant", "content": "Déjà vu."}, {"role": "user", "content": "3.14!"}]


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def tensors(reader: GGUFReader) -> dict[str, np.ndarray]:
    """Each tensor as float32 in numpy's row-major shape (GGUF lists dimensions innermost first)."""
    return {t.name: dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
            for t in reader.tensors}


def hf_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved rotary rows back to Hugging Face's half-split order."""
    rows, columns = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, columns).swapaxes(1, 2).reshape(rows, columns)


def source_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors under their GGUF names, float32, in Hugging Face's layout."""
    state = {name: t.to(torch.float32).numpy() for name, t in load_file(model_dir / "model.safetensors").items()}
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    named = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if "lm_head.weight" in state:
        named["output.weight"] = state["lm_head.weight"]
    for n in range(layers):
        named.update({f"blk.{n}.{g}.weight": state[f"model.layers.{n}.{h}.weight"] for h, g in LAYER_TENSORS.items()})
    return named


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GGUFReader]:
    folder = tmp_path_factory.mktemp("gguf")
    return {quant: GGUFReader(write_gguf(tiny_model_dir, folder / f"tiny-{quant}.gguf", quant).path)
            for quant in ("f32", "f16", "q8_0")}


def test_the_header_holds_the_llama_hyperparameters(exported):
    reader = exported["f32"]
    expected = {"general.architecture": "llama", "llama.context_length": 256, "llama.embedding_length": 192,
                "llama.block_count": 4, "llama.feed_forward_length": 512, "llama.attention.head_count": 6,
                "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 32, "llama.vocab_size": 1024,
                "general.file_type": 0}
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "llama.rope.freq_base") == 10000.0
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(exported["f16"], "general.file_type") == 1 and field(exported["q8_0"], "general.file_type") == 7


def test_the_tokenizer_is_tokenizer_json_token_for_token(exported, tiny_model_dir, tokenizer):
    reader = exported["f16"]
    spec = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()} | {a["id"]: a["content"] for a in spec["added_tokens"]}
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    # solo splits digits one by one, then GPT-2's regex: llama.cpp's smollm type is exactly those two regexes.
    assert field(reader, "tokenizer.ggml.pre") == "smollm"
    assert field(reader, "tokenizer.ggml.tokens") == [by_id[i] for i in range(len(by_id))]
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in spec["model"]["merges"]]
    types = field(reader, "tokenizer.ggml.token_type")
    special = {a["id"] for a in spec["added_tokens"]}
    assert all(types[i] == (TokenType.CONTROL if i in special else TokenType.NORMAL) for i in range(len(types)))
    ids = {key: field(reader, f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "padding")}
    assert ids == {"eos": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                   "eot": tokenizer.convert_tokens_to_ids("<|end|>"), "padding": tokenizer.pad_token_id}
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert "tokenizer.ggml.bos_token_id" not in reader.fields  # solo's tokenizer has none


def test_the_chat_template_renders_as_the_tokenizers(exported, tokenizer):
    template = field(exported["f16"], "tokenizer.chat_template")
    assert "{% generation %}" not in template  # transformers' training-only tag, which llama.cpp's Jinja does not know
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers and llama.cpp render it
    rendered = env.from_string(template).render(messages=CONVERSATION, add_generation_prompt=True)
    assert rendered == tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_every_weight_equals_the_checkpoints(exported, tiny_model_dir, quant):
    reader = exported[quant]
    stored = {t.name: t.tensor_type for t in reader.tensors}
    got, source = tensors(reader), source_weights(tiny_model_dir)
    assert set(got) == set(source) and "output.weight" not in got  # tied: llama.cpp reuses token_embd
    for name, expected in source.items():
        value = got[name]
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            value = hf_rotary_rows(value, 6 if "attn_q" in name else 2)
        assert value.shape == expected.shape, name
        if expected.ndim == 1 or quant == "f32":
            assert stored[name] == GGMLQuantizationType.F32 or expected.ndim == 2
            np.testing.assert_array_equal(value, expected, err_msg=name)
        elif quant == "f16":
            assert stored[name] == GGMLQuantizationType.F16
            np.testing.assert_array_equal(value, expected.astype(np.float16).astype(np.float32), err_msg=name)
        else:
            assert stored[name] == GGMLQuantizationType.Q8_0
            blocks = expected.reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # one int8 step of each block
            error = np.abs(value.reshape(-1, 32) - blocks)
            # Half a step of rounding, and the scale's own f16 rounding (2^-11 of it) times up to 127 steps.
            assert (error <= step * (0.5 + 127 / 2048) * 1.001).all(), name
            assert error.max() > 0  # it did quantize


def test_an_untied_padded_bf16_llama_with_llama3_rope(untied_model_dir, tmp_path):
    reader = GGUFReader(write_gguf(untied_model_dir, tmp_path / "u.gguf", "q8_0").path)
    got, source = tensors(reader), source_weights(untied_model_dir)
    stored = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" in got and set(got) == set(source) | {"rope_freqs.weight"}
    # A row of 80 values is no whole number of q8_0 blocks: f16, as llama.cpp's converter does.
    assert stored["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16
    assert stored["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q8_0
    # bf16 values, and f16 holds every one of them (but those too small for its exponent).
    np.testing.assert_allclose(got["blk.1.ffn_down.weight"], source["blk.1.ffn_down.weight"], atol=1e-7, rtol=0)
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 1040 and tokens[1030] == "[PAD1030]" and types[1030] == TokenType.UNUSED
    # The divisors llama.cpp applies to RoPE's frequencies are those transformers' Llama 3 scaling applies.
    config = LlamaConfig.from_pretrained(untied_model_dir)
    scaled = LlamaRotaryEmbedding(config).inv_freq
    plain = 50000.0 ** -(torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    np.testing.assert_allclose(got["rope_freqs.weight"], (plain / scaled.double()).numpy(), rtol=1e-5)
    assert field(reader, "llama.rope.freq_base") == 50000.0


def test_sharded_safetensors_and_a_pytorch_bin_give_the_same_file(tiny_model_dir, exported, tmp_path):
    """The weights stream from each shard of model.safetensors.index.json, or from a PyTorch pickle, alike."""
    sharded, pickled = tmp_path / "sharded", tmp_path / "pickled"
    for folder in (sharded, pickled):
        shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    LlamaForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="500KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    torch.save(load_file(tiny_model_dir / "model.safetensors"), pickled / "pytorch_model.bin")
    single = tensors(exported["f16"])
    for folder in (sharded, pickled):
        got = tensors(GGUFReader(write_gguf(folder, tmp_path / f"{folder.name}.gguf", "f16").path))
        assert got.keys() == single.keys()
        for name, value in single.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{folder.name}: {name}")


@pytest.mark.parametrize("template", [
    "{%- for m in messages -%}<|a|>{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}{%- endfor -%}",
    "{% for m in messages %}\n  {% generation %}\n{{ m['content'] }}  {%- endgeneration %}|\n{% endfor %}",
])
def test_the_generation_tag_goes_and_rendering_stays(tokenizer, template):
    plain = portable_chat_template(template)
    assert "generation" not in plain
    messages = [{"role": "user", "content": " a "}, {"role": "assistant", "content": "b \n"}]
    # As transformers and llama.cpp render chat templates: trim_blocks and lstrip_blocks.
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    assert env.from_string(plain).render(messages=messages) == \
        tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert portable_chat_template(None) is None


# ---------------------------------------------------------------- refusals, each one line and exit 2


def refused(capsys, *argv: str) -> str:
    assert main(["export", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solo: "), lines
    return lines[0]


def copy_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_another_architecture_is_refused(tiny_model_dir, tmp_path, capsys):
    folder = copy_model(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mistral",
                                                    "architectures": ["MistralForCausalLM"]}))
    line = refused(capsys, "--model", str(folder), "--format", "gguf", "--output", str(tmp_path / "m.gguf"))
    assert "mistral" in line and "Llama" in line
    assert not (tmp_path / "m.gguf").exists()


def test_a_sentencepiece_tokenizer_is_refused(tiny_model_dir, tmp_path, capsys):
    folder = copy_model(tiny_model_dir, tmp_path)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a\x00")
    line = refused(capsys, "--model", str(folder), "--format", "gguf", "--output", str(tmp_path / "m.gguf"))
    assert "SentencePiece" in line


def test_a_unigram_tokenizer_is_refused(tiny_model_dir, tmp_path, capsys):
    folder = copy_model(tiny_model_dir, tmp_path)
    Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0)).save(str(folder / "tokenizer.json"))
    line = refused(capsys, "--model", str(folder), "--format", "gguf", "--output", str(tmp_path / "m.gguf"))
    assert "Unigram" in line


def test_a_pre_tokenizer_llama_cpp_would_split_otherwise_is_refused(tiny_model_dir, tmp_path, capsys):
    """GPT-2's split with a leading space added: no llama.cpp type does that, so its tokens would differ."""
    folder = copy_model(tiny_model_dir, tmp_path)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    line = refused(capsys, "--model", str(folder), "--format", "gguf", "--output", str(tmp_path / "m.gguf"))
    assert "pre-tokenizer" in line and "smollm" in line


def test_a_folder_without_a_model_and_an_unknown_run_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOLO_HOME", str(tmp_path / "home"))
    assert "no Hugging Face model" in refused(capsys, "--model", str(tmp_path), "--format", "gguf")
    assert "no run named 'nope'" in refused(capsys, "--model", "nope")


def test_quant_without_gguf_and_a_gguf_name_without_gguf_are_refused(tiny_model_dir, tmp_path, capsys):
    assert "--format gguf" in refused(capsys, "--model", str(tiny_model_dir), "--quant", "q8_0")
    assert ".gguf" in refused(capsys, "--model", str(tiny_model_dir), "--format", "gguf", "--output",
                              str(tmp_path / "model.bin"))
