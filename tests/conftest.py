from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported Hugging Face folder: a BPE tokenizer trained on the embedded corpus and an
    untrained `demo` Llama with a 256-token window. Built once per session (~6s)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from solo import corpus
    from solo.model import llama_config
    from solo.tokenizer import stop_token_ids, train_bpe

    folder = tmp_path_factory.mktemp("tiny-model")
    tok = train_bpe((doc["text"] for doc in corpus.documents(max_documents=300)), vocab_size=1024, min_frequency=2)
    config = llama_config("demo", vocab_size=len(tok), seq_len=256, eos_token_id=stop_token_ids(tok))
    # At the default init (0.02) an untrained model repeats one token forever; a wider one gives
    # varied output (split UTF-8 characters included), so tests comparing token streams can fail.
    config.initializer_range = 0.1
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # As solo's export writes it.
    GenerationConfig(eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id,
                     max_new_tokens=256).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ray_local():
    """A private in-process Ray of two CPUs for one test module, whatever cluster RAY_ADDRESS names."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
