r"""Which tokens of a conversation the model learns from: the assistant's, whatever the chat template.

A template with `{% generation %}` blocks marks the assistant's text itself (solo's own does), and transformers
returns the mask. Almost no published template has them, so for any other the assistant turns are found by
rendering. For each assistant message i:

    before   the conversation up to message i, with the generation prompt  (…<|im_start|>assistant\n)
    through  the conversation up to and including message i                 (…<|im_start|>assistant\nHi<|im_end|>\n)

`before` must be a prefix of `through`, and `through` of the whole conversation's rendering; then what `through`
adds is the turn the model has to produce from that prompt. It is cut after its last end-of-turn token (the
tokenizer's eos and the model's generation-config eos: `<|im_end|>`, `<|eot_id|>`, `</s>`), so the model learns to
close its turn while what the template writes after it (a newline) stays prompt. The prefixes are compared as
text, not as token lists: a BPE may merge characters across a turn's boundary ("\n" + "\n" into "\n\n"), which
would make a turn's tokens differ from the whole's without the template being at fault. The whole rendering is
tokenized once, and a token is learned when it carries any character of an assistant span.

A template whose renderings do not extend each other (it renders earlier turns differently once later ones
follow: one that drops earlier reasoning, say) cannot say which tokens are the assistant's. It is refused in one
line that names `loss_on: all`, which learns every token of each conversation instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerBase

from solo.errors import SoloError
from solo.tokens.shards import IGNORE
from solo.tokens.tokenizer import render_chat
from solo.train.config import LossOn

GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def end_of_turn_tokens(tokenizer: PreTrainedTokenizerBase, model_dir: Path | None) -> tuple[str, ...]:
    """The tokens that end a turn: the tokenizer's eos and the eos ids of the model's generation config (an
    instruction-tuned Llama 3 ends turns with <|eot_id|> there, while its tokenizer's eos may be <|end_of_text|>)."""
    ids = {tokenizer.eos_token_id} - {None}
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
    return tuple(tokenizer.convert_ids_to_tokens(sorted(ids)))


@dataclass
class AssistantMasker:
    """Turns a conversation into (input_ids, labels) with `tokenizer`'s chat template; labels are IGNORE except on
    what the model learns: the assistant's turns (`loss_on: assistant`) or everything (`loss_on: all`)."""

    tokenizer: PreTrainedTokenizerBase
    loss_on: LossOn = "assistant"
    end_of_turn: tuple[str, ...] = ()
    model: str = "the model"  # how the refusal names the model
    marked: bool = field(init=False)  # the template has {% generation %} blocks

    def __post_init__(self) -> None:
        template = self.tokenizer.chat_template
        if not template:
            raise SoloError(f"{self.model} has no chat template (chat_template.jinja or tokenizer_config.json's "
                            "chat_template): fine-tuning renders conversations with it")
        templates = template.values() if isinstance(template, dict) else [template]
        self.marked = any(GENERATION_TAG.search(t) for t in templates)
        if self.loss_on == "assistant" and not self.marked and not getattr(self.tokenizer, "is_fast", False):
            raise SoloError(f"{self.model}'s tokenizer has no tokenizer.json (a fast tokenizer), which finding the "
                            "assistant's tokens needs: add one, or fine-tune with --set loss_on=all")

    @classmethod
    def for_model(cls, tokenizer: PreTrainedTokenizerBase, loss_on: LossOn, model_dir: Path | None) -> AssistantMasker:
        name = str(model_dir) if model_dir is not None else (tokenizer.name_or_path or "the model")
        return cls(tokenizer, loss_on, end_of_turn_tokens(tokenizer, model_dir), name)

    def tokens(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
        """The whole conversation's ids and labels (no cut: the caller decides what is too long). Raises what the
        template raises on a conversation it cannot print, and SoloError on a template that cannot be masked."""
        if self.loss_on == "all":
            ids = self._encode(self._render(messages, tools))["input_ids"]
            return ids, list(ids)
        if self.marked:
            ids, mask = render_chat(self.tokenizer, messages, tools)
            return ids, [i if m else IGNORE for i, m in zip(ids, mask)]
        text, spans = self.assistant_spans(messages, tools)
        encoding = self._encode(text, offsets=True)

        def learned(start: int, end: int) -> bool:  # the token carries a character of an assistant span
            return any(start < span_end and end > span_start for span_start, span_end in spans)

        labels = [token if learned(*offsets) else IGNORE
                  for token, offsets in zip(encoding["input_ids"], encoding["offset_mapping"])]
        return encoding["input_ids"], labels

    def assistant_spans(self, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[tuple[int, int]]]:
        """The conversation's rendering and the character spans of its assistant turns in it (see the module)."""
        text = self._render(messages, tools)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._prompt(messages[:i], tools)
            through = self._render(messages[:i + 1], tools)
            if not (through.startswith(before) and text.startswith(through)):
                raise SoloError(self._refusal(i, before, through))
            spans.append((len(before), self._end_of_answer(through, len(before))))
        return text, spans

    def _end_of_answer(self, through: str, start: int) -> int:
        """Where the answer starting at `start` ends: just after its last end-of-turn token, or with `through`."""
        ends = [found + len(token) for token in self.end_of_turn if (found := through.rfind(token, start)) >= 0]
        return max(ends, default=len(through))

    def _prompt(self, messages: list[dict], tools: list[dict] | None) -> str:
        if messages:
            return self._render(messages, tools, add_generation_prompt=True)
        try:  # a conversation the assistant opens: many templates cannot render no message at all
            return self._render([], tools, add_generation_prompt=True)
        except Exception:
            return ""

    def _render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _encode(self, text: str, offsets: bool = False):
        # The template writes the special tokens (a BOS) itself, as apply_chat_template's own tokenizing assumes.
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)

    def _refusal(self, index: int, before: str, through: str) -> str:
        if through.startswith(before):
            what = f"the conversation up to message {index + 1} (an assistant turn) is not a prefix of the whole's"
        else:
            what = f"the prompt before message {index + 1} (an assistant turn) is not a prefix of that turn's"
        return (f"{self.model}'s chat template cannot mark the assistant's tokens: its rendering of {what} (it "
                "renders earlier turns differently once later ones follow: it drops earlier reasoning, or moves the "
                "tool list to the last user turn); "
                "fine-tune with --set loss_on=all to learn from every token of each conversation")
