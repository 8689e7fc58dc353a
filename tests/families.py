"""Tiny random checkpoints of three third-party model families, as users download them: a Hugging Face folder
with weights in half precision, a byte-level BPE tokenizer carrying the family's special tokens, a generation
config whose eos is the family's end-of-turn token, and a chat template written here from the family's
published format (no model's template file is copied). None of the templates has `{% generation %}`, as almost
no published one has.

    hermes       Qwen2ForCausalLM    ChatML; tools in the system turn inside <tools></tools>, each call as
                                     {"name": …, "arguments": …} on a line between <tool_call> and
                                     </tool_call>, results in a tool turn inside <tool_response>
    llama3_json  LlamaForCausalLM    Llama 3 headers; tools as JSON in the system turn, a call as the assistant's
                                     whole content {"name": …, "parameters": …}, results in an ipython turn
    mistral      MistralForCausalLM  <s>[INST] … [/INST]answer</s>; [AVAILABLE_TOOLS] before the last user turn,
                                     calls as [TOOL_CALLS] [{"name": …, "arguments": …}]</s>, results in
                                     [TOOL_RESULTS] …[/TOOL_RESULTS]

The family names are vLLM's tool-parser names. `families` builds all three once per session (about a second);
`family` is the same, parametrized over the three. conftest.py registers both fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from solo.data import corpus

# Jinja as transformers runs it has trim_blocks on: a newline right after a block tag is dropped, so the
# templates write a newline that follows a tag as {{ '\n' }}.

_ARGUMENTS = ("{% if function['arguments'] is string %}{{ function['arguments'] }}"
              "{% else %}{{ function['arguments'] | tojson }}{% endif %}")
_FUNCTION = "{% set function = call['function'] if call['function'] is defined else call %}"

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{{ '\n\n' }}{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\n' }}</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if not loop.first %}<|im_start|>system\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% elif message['role'] == 'assistant' %}<|im_start|>assistant\n{{ message['content'] or '' }}"
    "{% for call in message.get('tool_calls') or [] %}" + _FUNCTION +
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "<tool_call>\n{\"name\": {{ function['name'] | tojson }}, \"arguments\": " + _ARGUMENTS + "}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}"
    "<|im_start|>tool\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA3_TEMPLATE = (
    "<|begin_of_text|>"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] | trim %}"
    "{% set rest = messages[1:] %}{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% if system or tools %}<|start_header_id|>system<|end_header_id|>\n\n{{ system }}"
    "{% if tools %}{% if system %}{{ '\n\n' }}{% endif %}"
    "You have access to the following functions. To call a function, respond with JSON for a function call "
    "in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}."
    "{% for tool in tools %}{{ '\n\n' }}{{ tool | tojson }}{% endfor %}{% endif %}<|eot_id|>{% endif %}"
    "{% for message in rest %}"
    "{% if message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{% if message['tool_calls'] | length != 1 %}"
    "{{ raise_exception('This template renders one tool call per assistant turn.') }}{% endif %}"
    "{% set call = message['tool_calls'][0] %}" + _FUNCTION +
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{\"name\": {{ function['name'] | tojson }}, \"parameters\": " + _ARGUMENTS + "}<|eot_id|>"
    "{% elif message['role'] in ('tool', 'ipython') %}"
    "<|start_header_id|>ipython<|end_header_id|>\n\n"
    "{% if message['content'] is mapping %}{{ message['content'] | tojson }}{% else %}{{ message['content'] }}"
    "{% endif %}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ (message['content'] or '') | trim }}<|eot_id|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{% set ns = namespace(first_user=-1, last_user=-1, system='') %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}"
    "{% if ns.first_user < 0 %}{% set ns.first_user = loop.index0 %}{% endif %}"
    "{% elif message['role'] == 'system' %}{% set ns.system = message['content'] %}{% endif %}{% endfor %}"
    "<s>"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if tools and loop.index0 == ns.last_user %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]"
    "{% endif %}[INST] {% if ns.system and loop.index0 == ns.first_user %}{{ ns.system }}{{ '\n\n' }}{% endif %}"
    "{{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] or '' }}"
    "{% if message.get('tool_calls') %}[TOOL_CALLS] ["
    "{% for call in message['tool_calls'] %}" + _FUNCTION +
    "{\"name\": {{ function['name'] | tojson }}, \"arguments\": " + _ARGUMENTS + "}"
    "{% if not loop.last %}, {% endif %}{% endfor %}]{% endif %}</s>"
    "{% elif message['role'] == 'tool' %}[TOOL_RESULTS] {{ message['content'] }}[/TOOL_RESULTS]"
    "{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    """One family's checkpoint folder, loadable by `AutoModelForCausalLM` and `AutoTokenizer`."""

    name: str  # vLLM's tool-parser name for the family: hermes, llama3_json, mistral
    architecture: str  # the transformers class in config.json
    folder: Path
    end_of_turn: str  # the token that closes each turn, the generation config's eos


@dataclass(frozen=True)
class _Recipe:
    model_class: type
    config_class: type
    template: str
    special_tokens: list[str]
    end_of_turn: str
    bos: str | None
    pad: str | None
    unk: str | None
    stop_tokens: list[str]  # the generation config's eos ids, as the published checkpoints list them
    added_tokens: tuple[str, ...] = ()  # in the vocabulary as single tokens, but not special (kept in decoding)
    tied: bool = True
    dtype: torch.dtype = torch.bfloat16


RECIPES = {
    "hermes": _Recipe(Qwen2ForCausalLM, Qwen2Config, HERMES_TEMPLATE,
                      ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], end_of_turn="<|im_end|>", bos=None,
                      pad="<|endoftext|>", unk=None, stop_tokens=["<|im_end|>", "<|endoftext|>"],
                      added_tokens=("<tool_call>", "</tool_call>")),
    "llama3_json": _Recipe(LlamaForCausalLM, LlamaConfig, LLAMA3_TEMPLATE,
                           ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"], end_of_turn="<|eot_id|>",
                           bos="<|begin_of_text|>", pad=None, unk=None,
                           stop_tokens=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], tied=False),
    "mistral": _Recipe(MistralForCausalLM, MistralConfig, MISTRAL_TEMPLATE,
                       ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                        "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], end_of_turn="</s>", bos="<s>",
                       pad=None, unk="<unk>", stop_tokens=["</s>"], tied=False, dtype=torch.float16),
}
FAMILY_NAMES = tuple(RECIPES)

# The split before byte-level BPE that Qwen2 and Llama 3 share (transformers rebuilds Qwen2's tokenizer with it
# whatever tokenizer.json says, so every family uses it and each folder's tokenizer.json is what loads).
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _texts() -> list[str]:
    return [doc["text"] for doc in corpus.documents(max_documents=40)]


def _tokenizer(recipe: _Recipe, texts: list[str]) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=640, min_frequency=2, show_progress=False,
                                                       special_tokens=recipe.special_tokens,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=recipe.bos, eos_token=recipe.end_of_turn,
                                        pad_token=recipe.pad, unk_token=recipe.unk, chat_template=recipe.template,
                                        model_max_length=1024, clean_up_tokenization_spaces=False)
    tokenizer.add_tokens(list(recipe.added_tokens))
    return tokenizer


def build_family(name: str, folder: Path, texts: list[str] | None = None) -> Family:
    """Write family `name`'s checkpoint into `folder`: 2 layers of width 64, random weights (seeded)."""
    recipe = RECIPES[name]
    tokenizer = _tokenizer(recipe, texts if texts is not None else _texts())
    ids = tokenizer.convert_tokens_to_ids
    stop_ids = [ids(token) for token in recipe.stop_tokens]
    config = recipe.config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=1024, tie_word_embeddings=recipe.tied,
                                 bos_token_id=ids(recipe.bos) if recipe.bos else None, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id,
                                 # At the default init (0.02) an untrained model repeats one token forever.
                                 initializer_range=0.1)
    torch.manual_seed(sorted(RECIPES).index(name))
    model = recipe.model_class(config).to(recipe.dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                     max_new_tokens=64).save_pretrained(folder)
    return Family(name, recipe.model_class.__name__, folder, recipe.end_of_turn)


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    """The three families' checkpoints, by name, built once per session."""
    texts = _texts()
    return {name: build_family(name, tmp_path_factory.mktemp(f"family-{name}"), texts) for name in FAMILY_NAMES}


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def family(request: pytest.FixtureRequest, families: dict[str, Family]) -> Family:
    """Each family in turn."""
    return families[request.param]


# A ChatML template that drops the reasoning of earlier assistant turns, as reasoning models' templates do: no
# rendering of a conversation is a prefix of the next, so no mask can be found by rendering.
DROPS_EARLIER_REASONING = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and not loop.last %}{{ message['content'].split('</think>')[-1] }}"
    "{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
