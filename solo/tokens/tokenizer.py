"""The tokenizer as training and serving use it: its special tokens, and the one chat template both share.

The template marks assistant turns with `{% generation %}`, so the same Jinja that renders a
prompt for serving also yields the mask of assistant tokens for training: there is no second
implementation to drift. (solo.tokens.train_bpe trains the vocabulary.)
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"  # between pretraining documents
END_OF_TURN = "<|end|>"        # closes every chat message; generation stops at it
PAD = "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
# Hermes' tool-call markup (Qwen 2.5 and 3 write it too), so that vLLM's `hermes` parser and llama.cpp read the
# calls of solo's models. Tokenizers trained before it have `<|tool_call|>` and `<|/tool_call|>` instead, in
# their vocabulary and their template: serving tells the two apart by the template (solo.serving.tools).
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
LEGACY_TOOL_CALL_OPEN, LEGACY_TOOL_CALL_CLOSE = "<|tool_call|>", "<|/tool_call|>"
SPECIAL_TOKENS = [END_OF_TEXT, PAD, END_OF_TURN, *ROLE_TOKENS, TOOL_CALL_OPEN, TOOL_CALL_CLOSE]

# Tools offered in a request go into a system turn; an assistant's tool calls are JSON objects
# `{"name": ..., "arguments": {...}}` between the tool-call tokens, each on a line of its own as Hermes and Qwen
# write them; a tool's result is a `tool` turn.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "<|system|>You can call these tools. To call one, answer with "
    "<tool_call>\n{\"name\": ..., \"arguments\": {...}}\n</tool_call>.\n"
    "{{ tools | tojson }}<|end|>"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set function = call['function'] if call['function'] is defined else call -%}"
    "<tool_call>\n{\"name\": {{ function['name'] | tojson }}, \"arguments\": "
    "{%- if function['arguments'] is string %} {{ function['arguments'] }}"
    "{%- else %} {{ function['arguments'] | tojson }}{%- endif -%}"
    "}\n</tool_call>"
    "{%- endfor -%}"
    "<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>{{ message['content'] or '' }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )


def load(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))


# What ends a turn, or a document, in other families' vocabularies: ChatML (Qwen), Llama 3 (a turn, one that
# awaits a tool's result, a document), Gemma; Mistral's and Llama 2's `</s>` is their end-of-sequence token.
OTHER_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>")


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens that end a generation: the end of a turn, or of a document, in solo's vocabulary or in another
    family's, and the tokenizer's own end-of-sequence token."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (END_OF_TURN, END_OF_TEXT, *OTHER_END_OF_TURN)]
    ids.append(tokenizer.eos_token_id)
    found = [i for i in ids if i is not None and i != tokenizer.unk_token_id]
    return list(dict.fromkeys(found))  # in order, once each


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and, for each, 1 where it belongs to an assistant turn.

    Training uses the mask for its loss; serving uses the ids with `add_generation_prompt`.
    """
    rendered = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    return list(rendered["input_ids"]), list(rendered["assistant_masks"])
