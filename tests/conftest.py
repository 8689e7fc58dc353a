from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch
import torch.distributed as dist
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from solo.data import corpus
from solo.runtime import join_one_process_group
from solo.tokens.shards import ShardWriter, is_validation, pack, token_dtype
from solo.tokens.tokenizer import load, stop_token_ids
from solo.tokens.train_bpe import train_bpe
from solo.train.checkpoints import resume_from
from solo.train.presets import llama_config
from tests.families import families, family  # noqa: F401  (session fixtures: three third-party model families)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported Hugging Face folder: a BPE tokenizer trained on the embedded corpus and an
    untrained `demo` Llama with a 256-token window. Built once per session (~6s)."""
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


@pytest.fixture(scope="session")
def untied_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another Llama with tiny_model_dir's tokenizer, for GGUF export: an untied output head, as many key/value
    heads as query heads, a feed-forward width (80) that is no whole number of q8_0 blocks, an embedding padded
    past the vocabulary, Llama 3's RoPE scaling, and bf16 weights."""
    folder = tmp_path_factory.mktemp("untied")
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(tiny_model_dir / file, folder / file)
    config = LlamaConfig(vocab_size=1040, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.1,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 64})
    torch.manual_seed(2)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    """tiny_model_dir's tokenizer, as serving loads it."""
    return load(tiny_model_dir)


@dataclass(frozen=True)
class TinyLora:
    folder: Path  # a LoRA adapter on tiny_model_dir, in peft's format
    prompt_ids: list[int]
    expected: list[int]  # what the merged model decodes greedily from prompt_ids (12 tokens)


@pytest.fixture(scope="session")
def tiny_lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyLora:
    """A LoRA adapter with random B matrices (peft starts them at zero), so it changes what the
    model says, and the tokens the merged model decodes: what an engine serving it must produce."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(1)
    lora = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("tiny-lora")
    lora.save_pretrained(folder)
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir),
                                       str(folder)).merge_and_unload().eval()
    prompt_ids = [5, 17, 42, 99, 7]
    expected = merged.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12, eos_token_id=None,
                               min_new_tokens=12)[0, len(prompt_ids):].tolist()
    return TinyLora(folder, prompt_ids, expected)


@pytest.fixture(scope="module")
def ray_local():
    """A private in-process Ray of two CPUs for one test module, whatever cluster RAY_ADDRESS names."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a run's tokenizer and tokenize stages leave it: tokenizer/ (a 512-token BPE on 60
    embedded documents) and tokenize/{train,val}/ (rows of 64 tokens, split by document as tokenize
    does). Built once per session (~3 s)."""
    seq_len = 64
    folder = tmp_path_factory.mktemp("tiny-tokens")
    documents = list(corpus.documents(max_documents=60))
    tokenizer = train_bpe((d["text"] for d in documents), vocab_size=512, min_frequency=2)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    for split in ("train", "val"):
        members = [d for d in documents if is_validation(d["id"], 0.1) == (split == "val")]
        encoded = [tokenizer(d["text"], add_special_tokens=False)["input_ids"] for d in members]
        rows, _ = pack(encoded, tokenizer.eos_token_id, seq_len, token_dtype(len(tokenizer)))
        writer = ShardWriter(folder / "tokenize" / split, seq_len, token_dtype(len(tokenizer)), rows_per_shard=256)
        for row in rows:
            writer.add(row)
        writer.close()
    return folder


@pytest.fixture(scope="session")
def gloo_group():
    """A one-process gloo group, so `train_worker` runs in the test process as rank 0 of 1. One for
    the whole session: DeepSpeed keeps the groups it derives from the first one, so a group made
    after destroying it is refused as "not registered"."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCAL_RANK", "0")  # and never RANK: solo.runtime.launched_rank must not see a launcher
        join_one_process_group(cuda=False)
        yield
        dist.destroy_process_group()


class PickedCheckpointSink:
    """Each checkpoint in a folder of its own, like Ray Train's; `resume_from` plays a restarted
    worker handed that checkpoint. (`solo.train.checkpoints.FolderSink` always resumes from the newest.)"""

    def __init__(self, root: Path, resume_from: Path | None = None):
        self.root, self.resume_from = root, resume_from

    def latest(self):
        return resume_from(self.resume_from) if self.resume_from is not None else None

    def save(self, engine, step, client_state, metrics, exclude_frozen=False):
        engine.save_checkpoint(str(self.root / f"step_{step}"), tag=f"step_{step:08d}", client_state=client_state,
                               exclude_frozen_parameters=exclude_frozen)

    def report(self, metrics):
        pass


@pytest.fixture(scope="session")
def picked_sink() -> type[PickedCheckpointSink]:
    return PickedCheckpointSink
