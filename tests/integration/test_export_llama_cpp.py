"""An exported GGUF in llama.cpp itself (through llama-cpp-python): it splits text into the very tokens solo's
tokenizer does, and computes the logits transformers computes, so the weights, their q/k order, RoPE and the
hyper-parameters all arrived. Runs where the `llama_cpp` package imports (`pip install llama-cpp-python`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from solo.export.gguf import write_gguf
from solo.tokens.tokenizer import load

pytestmark = pytest.mark.llama_cpp
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llama_cpp package) is not installed: "
                                                    "pip install llama-cpp-python to run llama.cpp on the export")

TEXTS = [
    "Café №42: naïve—déjà vu, 3.14!",
    "  two  spaces,\ttabs\n\nand newlines; don't I'm we'll 12345 x²½ ١٢٣",
    "def f(x):\n    return {'a': [1, 2.5e-3]}  # 東京 🙂",
]


def llama(gguf: Path):
    # Every position's logits kept, so the last position's can be read after eval; the KV cache in f32 (its
    # default, f16, rounds keys and values to 3 significant digits: 1e-3 of the logits, hiding nothing).
    return llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


@pytest.fixture(scope="module")
def solo_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32").path


@pytest.mark.parametrize("text", TEXTS)
def test_llama_cpp_splits_text_into_solos_tokens(solo_gguf, tiny_model_dir, text):
    expected = load(tiny_model_dir)(text, add_special_tokens=False)["input_ids"]
    assert llama(solo_gguf).tokenize(text.encode(), add_bos=False, special=False) == expected


@pytest.mark.parametrize("model", ["tiny_model_dir", "untied_model_dir"])
def test_llama_cpp_computes_transformers_logits(model, request, tmp_path):
    """solo's demo shape (grouped-query attention, tied embeddings), and an untied Llama with Llama 3's RoPE
    scaling: the last position's logits agree to float tolerance."""
    folder: Path = request.getfixturevalue(model)
    gguf = write_gguf(folder, tmp_path / "model-f32.gguf", "f32").path
    ids = load(folder)(TEXTS[0], add_special_tokens=False)["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0, -1].numpy()
    engine = llama(gguf)
    engine.eval(ids)
    got = np.asarray(engine.scores[len(ids) - 1])
    difference = np.abs(got - expected).max()
    print(f"{model}: max |llama.cpp - transformers| over the last position's logits = {difference:.2e} "
          f"(logits span {expected.min():.2f} to {expected.max():.2f})")
    assert difference < 1e-4 * max(1.0, np.abs(expected).max())
    assert int(got.argmax()) == int(expected.argmax())
