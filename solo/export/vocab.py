"""A byte-level BPE tokenizer (tokenizer.json) as llama.cpp's GGUF keys describe one: `tokenizer.ggml.model`
gpt2, the tokens with their types, the merges, the special ids, and the pre-tokenizer type.

llama.cpp does not read tokenizer.json: it splits text with the regexes of a pre-tokenizer type it names
(`tokenizer.ggml.pre`, src/llama-vocab.cpp), then applies the merges. A tokenizer is exported only when one of
those types splits text exactly as its own pre-tokenizer does; otherwise llama.cpp would tokenize the same
text into other tokens than the model was trained on, silently, so the export is refused instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from gguf import TokenType
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from solo.errors import SoloError

# GPT-2's byte-level split (`'s|'t|… ?\p{L}+| ?\p{N}+|…`), which tokenizers' ByteLevel applies with use_regex.
_GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_LLAMA3_SPLIT = {"type": "Split", "behavior": "Isolated", "invert": False, "pattern": {
    "Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+"}}

# llama.cpp's pre-tokenizer type → the pre-tokenizer steps (tokenizer.json) that split text as its regexes do,
# and whether its BPE looks a whole word up before merging (`ignore_merges`, which llama.cpp sets for llama-bpe).
PRE_TOKENIZERS: dict[str, tuple[list[dict], bool]] = {
    # solo's own (solo.tokens.train_bpe): every digit on its own, then GPT-2's split. llama.cpp's "smollm" type
    # is `\p{N}` then the GPT-2 regex (as are "starcoder" and "refact"); it alone of them also leaves the
    # spaces of decoded text as they are, as solo's tokenizer does (clean_up_tokenization_spaces false).
    "smollm": ([{"type": "Digits", "individual_digits": True}, _GPT2_BYTE_LEVEL], False),
    "gpt-2": ([_GPT2_BYTE_LEVEL], False),
    "llama-bpe": ([_LLAMA3_SPLIT, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}], True),
}


@dataclass(frozen=True)
class GgufVocab:
    """What the GGUF file says of the tokenizer; `tokens` has one entry per row of the embedding."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None   # the end of a turn, where it is not the end of text: chat generation stops at it
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def read_tokenizer_json(model_dir: Path) -> dict:
    """tokenizer.json, checked to be a byte-level BPE."""
    file = model_dir / "tokenizer.json"
    if not file.is_file():
        found = "a SentencePiece tokenizer.model" if (model_dir / "tokenizer.model").is_file() else "no tokenizer.json"
        raise SoloError(f"{model_dir} has {found}: GGUF export takes a byte-level BPE tokenizer (tokenizer.json)")
    spec = json.loads(file.read_text())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise SoloError(f"{model_dir}'s tokenizer is a {model.get('type')} model: GGUF export takes a byte-level "
                        "BPE tokenizer (a SentencePiece/Unigram or WordPiece one is not exported)")
    if model.get("byte_fallback") or not _is_byte_level(spec.get("decoder")):
        raise SoloError(f"{model_dir}'s tokenizer is a SentencePiece-style BPE (byte fallback, no ByteLevel "
                        "decoder): GGUF export takes a byte-level BPE tokenizer")
    return spec


def _is_byte_level(step: dict | None) -> bool:
    if not step:
        return False
    if step.get("type") == "Sequence":
        steps = step.get("decoders") or step.get("pretokenizers") or []
        return any(_is_byte_level(s) for s in steps)
    return step.get("type") == "ByteLevel"


def pre_tokenizer_type(spec: dict) -> str:
    """The llama.cpp pre-tokenizer type that splits text exactly as tokenizer.json's pre-tokenizer does."""
    if spec.get("normalizer"):
        raise SoloError(f"the tokenizer normalizes text first ({spec['normalizer'].get('type')}), which llama.cpp's "
                        "byte-level BPE does not: its tokens would differ, so it is not exported")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    # trim_offsets and prepend_scheme change offsets, never the split.
    steps = [{k: v for k, v in step.items() if k not in ("trim_offsets", "prepend_scheme")} for step in steps]
    ignore_merges = bool((spec.get("model") or {}).get("ignore_merges"))
    for name, (expected, ignores) in PRE_TOKENIZERS.items():
        if steps == expected and ignore_merges == ignores:
            return name
    raise SoloError(f"no llama.cpp pre-tokenizer type splits text as this tokenizer does ({json.dumps(steps)}, "
                    f"ignore_merges {ignore_merges}): known are {', '.join(PRE_TOKENIZERS)}")


def _merges(model: dict) -> list[str]:
    """The merges as GGUF stores them, "left right" (tokenizers ≥ 0.20 writes pairs, older ones strings)."""
    return [" ".join(merge) if isinstance(merge, list) else merge for merge in model.get("merges", [])]


def gguf_vocab(model_dir: Path, vocab_size: int, eos_ids: list[int]) -> GgufVocab:
    """The tokenizer of `model_dir` for a model whose embedding has `vocab_size` rows; `eos_ids`: the ids that
    end a generation (generation_config.json), of which one other than the end of text ends a turn."""
    spec = read_tokenizer_json(model_dir)
    pre = pre_tokenizer_type(spec)
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(model_dir))  # its special tokens
    by_id: dict[int, str] = {i: token for token, i in spec["model"]["vocab"].items()}
    special: dict[int, bool] = {}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        special[added["id"]] = added.get("special", False)
    if max(by_id) >= vocab_size:
        raise SoloError(f"the tokenizer has token id {max(by_id)}, beyond the model's {vocab_size} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # rows the model pads its embedding with: no text maps to them
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL if i not in special else
                         TokenType.CONTROL if special[i] else TokenType.USER_DEFINED)
    probe = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    # Without an end-of-text token of its own, the first id that ends a generation (llama.cpp would otherwise
    # take its default, a token of the vocabulary like any other).
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else next(iter(eos_ids), None)
    return GgufVocab(
        tokens=tokens, token_types=[int(t) for t in types], merges=_merges(spec["model"]), pre=pre,
        bos_id=tokenizer.bos_token_id, eos_id=eos,
        eot_id=next((i for i in eos_ids if i != eos), None),
        pad_id=tokenizer.pad_token_id, unk_id=tokenizer.unk_token_id,
        add_bos=tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] != bare[:1],
        add_eos=eos is not None and probe[-1:] == [eos] != bare[-1:],
        chat_template=portable_chat_template(tokenizer.chat_template),
    )


_GENERATION_TAG = re.compile(r"\{%(-?)\s*(?:end)?generation\s*(-?)%\}")


def portable_chat_template(template: str | None) -> str | None:
    """The chat template as plain Jinja. transformers' `{% generation %}` blocks mark the assistant's tokens for
    training's loss mask and render nothing of their own; llama.cpp's and llama-cpp-python's Jinja do not know
    them. Each tag is dropped where that changes nothing, else becomes an empty block with the same whitespace
    control (chat templates render with trim_blocks and lstrip_blocks, which act on block tags)."""
    if not isinstance(template, str):
        return None

    def plain(match: re.Match) -> str:
        left, right = match.groups()
        line_start = template[template.rfind("\n", 0, match.start()) + 1:match.start()]
        if left or right or template[match.end():match.end() + 1] == "\n" or not line_start.strip():
            return f"{{%{left} if false %}}{{% endif {right}%}}"
        return ""

    return _GENERATION_TAG.sub(plain, template)
