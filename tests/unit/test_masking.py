"""The assistant-only loss on third-party chat templates (tests/families.py), which have no {% generation %}: the
learned tokens are exactly each assistant turn and its end-of-turn token, whatever the family."""

import json
import shutil

import pytest

from solo.config import checkout_root
from solo.errors import SoloError
from solo.tokens.shards import IGNORE, TokenShards
from solo.tokens.tokenizer import load
from solo.train.config import FinetuneConfig
from solo.train.masking import AssistantMasker
from solo.train.sft import build_sft_rows
from tests.families import DROPS_EARLIER_REASONING

ALPACA = (checkout_root() / "../shared/data/alpaca/alpaca_5000.json").resolve()

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Today's weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
TOOL_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "{\"celsius\": 3}"},
    {"role": "assistant", "content": "It is 3 °C in Oslo."}]
CHAT = [{"role": "user", "content": "What does len do?"},
        {"role": "assistant", "content": "It counts the items."},
        {"role": "user", "content": "And sorted?"},
        {"role": "assistant", "content": "It returns a new sorted list."}]

# How each family writes the call above as the assistant's turn.
CALL = {"hermes": '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
        "llama3_json": '{"name": "weather", "parameters": {"city": "Oslo"}}',
        "mistral": '[TOOL_CALLS] [{"name": "weather", "arguments": {"city": "Oslo"}}]'}


def learned_turns(tokenizer, ids, labels) -> list[str]:
    """The labelled tokens, decoded run by run (a run: consecutive labelled tokens)."""
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            assert label == token
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    return [tokenizer.decode(r) for r in runs + ([run] if run else [])]


def masker(family, loss_on="assistant"):
    return AssistantMasker.for_model(load(family.folder), loss_on, family.folder)


def test_a_tool_call_a_tool_result_and_the_answer_learn_exactly_the_assistant_turns(family):
    tokenizer = load(family.folder)
    ids, labels = masker(family).tokens(TOOL_CONVERSATION, TOOLS)
    # The same ids the template gives when it tokenizes itself: the mask is laid on the real rendering.
    assert ids == tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, return_dict=True)["input_ids"]
    eot = family.end_of_turn
    assert learned_turns(tokenizer, ids, labels) == [CALL[family.name] + eot, "It is 3 °C in Oslo." + eot]


def test_every_turn_of_a_multi_turn_chat_is_learned_and_nothing_else(family):
    tokenizer = load(family.folder)
    ids, labels = masker(family).tokens(CHAT)
    assert learned_turns(tokenizer, ids, labels) == ["It counts the items." + family.end_of_turn,
                                                     "It returns a new sorted list." + family.end_of_turn]
    # What follows the end-of-turn token (ChatML's newline) is the next prompt's, not the answer's.
    last = max(i for i, label in enumerate(labels) if label != IGNORE)
    assert tokenizer.convert_ids_to_tokens(ids[last]) == family.end_of_turn


def test_loss_on_all_learns_every_token(family):
    ids, labels = masker(family, loss_on="all").tokens(TOOL_CONVERSATION, TOOLS)
    assert labels == ids
    assert ids == load(family.folder).apply_chat_template(TOOL_CONVERSATION, tools=TOOLS,
                                                          return_dict=True)["input_ids"]


# Renders an assistant's reasoning only in its last turn, as templates of reasoning models do: the first turn
# renders one way alone and another once a later turn follows.
def test_a_template_that_rewrites_earlier_turns_is_refused_in_one_line_naming_loss_on(families, tmp_path):
    folder = tmp_path / "reasoning"
    shutil.copytree(families["hermes"].folder, folder)
    (folder / "chat_template.jinja").write_text(DROPS_EARLIER_REASONING)
    reasoning = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>easy</think>4"},
                 {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "<think>also</think>6"}]
    with pytest.raises(SoloError) as refused:
        AssistantMasker.for_model(load(folder), "assistant", folder).tokens(reasoning)
    message = str(refused.value)
    assert "\n" not in message and str(folder) in message and "--set loss_on=all" in message
    # One turn alone is a prefix of itself: the reasoning of a last turn is learned.
    ids, labels = AssistantMasker.for_model(load(folder), "assistant", folder).tokens(reasoning[:2])
    assert learned_turns(load(folder), ids, labels) == ["<think>easy</think>4<|im_end|>"]
    ids, labels = AssistantMasker.for_model(load(folder), "all", folder).tokens(reasoning)
    assert labels == ids


def test_mistral_s_tool_list_before_the_last_user_turn_cannot_be_masked_over_two_user_turns(families):
    """Mistral's published format moves [AVAILABLE_TOOLS] to the last user turn, so with tools offered a second
    user turn rewrites the first: refused, with the way out."""
    two_questions = TOOL_CONVERSATION + [{"role": "user", "content": "And in Bergen?"},
                                         {"role": "assistant", "content": "Ask me again tomorrow."}]
    with pytest.raises(SoloError, match="loss_on=all"):
        masker(families["mistral"]).tokens(two_questions, TOOLS)
    assert masker(families["mistral"]).tokens(two_questions)  # without tools offered it is a plain chat
    for name in ("hermes", "llama3_json"):  # theirs stays in the first turn
        tokenizer = load(families[name].folder)
        assert len(learned_turns(tokenizer, *masker(families[name]).tokens(two_questions, TOOLS))) == 3


def test_a_model_without_a_chat_template_is_refused_in_one_line(families, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(families["llama3_json"].folder, folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(SoloError, match="has no chat template") as refused:
        AssistantMasker.for_model(load(folder), "assistant", folder)
    assert "\n" not in str(refused.value)


def test_alpaca_records_on_a_chatml_checkpoint_find_the_assistant_tokens(families, tmp_path):
    """The issue's case: QLoRA data from Alpaca on a third-party checkpoint used to find no assistant token."""
    family = families["hermes"]
    config = FinetuneConfig(method="qlora", data=str(ALPACA), max_examples=200, seq_len=256)
    metrics = build_sft_rows(load(family.folder), config, tmp_path / "rows", model_dir=family.folder)
    report = json.loads((tmp_path / "rows" / "report.json").read_text())
    assert metrics["conversations"] > 100 and metrics["assistant_tokens"] > 0
    # Every record is kept or counted under why it was not: too long, never "no assistant token".
    assert metrics["conversations"] + metrics["skipped"] == 200
    assert set(report["skipped_by_reason"]) <= {"longer than seq_len 256", "empty message"}
    shards = TokenShards(tmp_path / "rows" / "train")
    ids, labels = shards.rows([0])
    tokenizer = load(family.folder)
    turns = learned_turns(tokenizer, ids[0].tolist(), labels[0].tolist())
    assert turns and all(turn.endswith("<|im_end|>") for turn in turns)
    assert not any("<|im_start|>" in turn for turn in turns)


def test_rows_of_a_family_without_a_pad_token_are_padded_with_its_eos(families, tmp_path):
    family = families["llama3_json"]
    tokenizer = load(family.folder)
    assert tokenizer.pad_token_id is None
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": CHAT}) + "\n")
    build_sft_rows(tokenizer, FinetuneConfig(data=str(data), seq_len=128), tmp_path / "rows", val_fraction=1e-9,
                   model_dir=family.folder)
    ids, labels = TokenShards(tmp_path / "rows" / "train").rows([0])
    assert ids[0, -1] == tokenizer.convert_tokens_to_ids(family.end_of_turn) and labels[0, -1] == IGNORE
