import json

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from solo.data import corpus
from solo.errors import SoloError
from solo.tokens import tokenizer as tok
from solo.tokens import train_bpe as bpe
from solo.tokens.shards import IGNORE, ShardWriter, TokenShards
from solo.train.chat_formats import SkipCounts, read_conversations
from solo.train.config import FinetuneConfig
from solo.train.masking import AssistantMasker
from solo.train.presets import llama_config
from solo.train.sft import RowPacker, build_sft_rows

MESSAGES = [{"role": "user", "content": "What does len do?"},
            {"role": "assistant", "content": "Return the number of items in a container."}]


def masked_tokens(tokenizer, messages):
    """(ids, labels) of one conversation under solo's own template, whose {% generation %} marks the assistant."""
    return AssistantMasker(tokenizer).tokens(messages)


def small_tokenizer(tmp_path):
    bpe.train_bpe([d["text"] for d in corpus.documents(max_documents=40)], 600, 2).save_pretrained(str(tmp_path))
    return tok.load(tmp_path)


def test_labels_only_on_assistant_tokens(tmp_path):
    tokenizer = small_tokenizer(tmp_path)
    ids, labels = masked_tokens(tokenizer, MESSAGES)
    assert len(ids) == len(labels) < 64
    learned = tokenizer.decode([i for i in labels if i != IGNORE])
    assert learned == "Return the number of items in a container.<|end|>"


def test_masked_tokens_contribute_exactly_zero_gradient(tmp_path):
    tokenizer = small_tokenizer(tmp_path)
    ids, labels = masked_tokens(tokenizer, MESSAGES)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("demo", vocab_size=len(tokenizer), seq_len=48))
    input_ids, target = torch.tensor([ids]), torch.tensor([labels])
    logits = model(input_ids=input_ids).logits
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], target[0, 1:], ignore_index=IGNORE)
    # The same loss transformers computes from `labels` (it shifts them the same way).
    assert torch.allclose(loss, model(input_ids=input_ids, labels=target).loss)
    loss.backward()
    grad_norm_per_position = logits.grad[0, :-1].abs().sum(-1)
    masked = target[0, 1:] == IGNORE
    assert masked.any() and (~masked).any()
    assert (grad_norm_per_position[masked] == 0).all()
    assert (grad_norm_per_position[~masked] > 0).all()


def test_a_conversation_longer_than_seq_len_is_counted_as_such_never_cut(tmp_path):
    tokenizer = small_tokenizer(tmp_path / "tok")
    length = len(masked_tokens(tokenizer, MESSAGES)[0])
    longer = [MESSAGES[0], {"role": "assistant", "content": MESSAGES[1]["content"] + " Or of a sequence."}]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (MESSAGES, longer, longer)))
    metrics = build_sft_rows(tokenizer, FinetuneConfig(data=str(data), seq_len=length), tmp_path / "rows",
                             val_fraction=1e-9)
    assert metrics["conversations"] == 1 and metrics["tokens"] == length
    assert metrics[f"skipped: longer than seq_len {length}"] == 2
    with pytest.raises(SoloError, match=r"\(3 longer than seq_len 8\): raise seq_len"):
        build_sft_rows(tokenizer, FinetuneConfig(data=str(data), seq_len=8), tmp_path / "rows8")


# ---------------------------------------------------------------- formats


TOOL_CONVERSATION = {"messages": [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "{\"celsius\": 3}"},
    {"role": "assistant", "content": "It is 3 °C in Oslo."}],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}


def read(tmp_path, lines, layout="auto", name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    skipped = SkipCounts()
    return list(read_conversations(str(path), layout, None, skipped)), skipped


def test_messages_alpaca_and_sharegpt_records_become_the_same_kind_of_conversation(tmp_path):
    found, skipped = read(tmp_path, [
        TOOL_CONVERSATION,
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hello"},
                           {"from": "gpt", "value": "Hello!"}]},
    ])
    assert skipped.total == 0
    tools, alpaca, alpaca_no_input, sharegpt = found
    assert tools.tools and tools.messages[1]["tool_calls"][0]["function"]["name"] == "weather"
    assert [m["role"] for m in tools.messages] == ["user", "assistant", "tool", "assistant"]
    assert alpaca.messages == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                               {"role": "assistant", "content": "5"}]
    assert alpaca_no_input.messages[0] == {"role": "user", "content": "Say hi."}
    assert [m["role"] for m in sharegpt.messages] == ["system", "user", "assistant"]


def test_an_alpaca_json_list_is_read_as_records(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Blue."},
                                {"instruction": "", "input": "", "output": "x"}]))
    skipped = SkipCounts()
    found = list(read_conversations(str(path), "alpaca", None, skipped))
    assert [c.messages[1]["content"] for c in found] == ["Blue."]
    assert skipped.reasons == {"empty message": 1}


def test_malformed_records_are_counted_by_reason_and_skipped(tmp_path):
    found, skipped = read(tmp_path, [
        "{not json",
        "[1, 2]",
        {"text": "no conversation here"},
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [{}]}]},
        {"conversations": [{"from": "alien", "value": "hi"}]},
        {"instruction": "Do it.", "output": 7},
        {"instruction": "Fine.", "output": "Fine."},
    ])
    assert len(found) == 1
    assert skipped.reasons == {"not JSON": 1, "not a JSON object": 1, "unknown layout: no messages, conversations "
                               "or instruction/output": 1, "unknown role": 1, "no assistant turn": 1,
                               "tool call without a function name": 1, "unknown ShareGPT speaker": 1,
                               "output is not a string": 1}
    _, forced = read(tmp_path, [{"instruction": "a", "output": "b"}], layout="sharegpt")
    assert forced.reasons == {"no conversations field (sharegpt layout)": 1}


def test_build_sft_rows_writes_the_skip_reasons_into_its_report(tmp_path):
    tokenizer = small_tokenizer(tmp_path / "tok")
    data = tmp_path / "chats.jsonl"
    records = [json.dumps(r) for r in [TOOL_CONVERSATION, {"messages": MESSAGES}, {"bad": 1}]] + ["oops"]
    data.write_text("\n".join(records) + "\n")
    metrics = build_sft_rows(tokenizer, FinetuneConfig(data=str(data), seq_len=512), tmp_path / "rows",
                             val_fraction=1e-9)
    report = json.loads((tmp_path / "rows" / "report.json").read_text())
    assert report["skipped_by_reason"] == {"not JSON": 1, "unknown layout: no messages, conversations or "
                                                          "instruction/output": 1}
    assert metrics["skipped"] == 2 and metrics["conversations"] == 2
    assert metrics["train_rows"] == 1 and metrics["val_rows"] == 0  # both packed into one row
    with pytest.raises(SoloError, match="no usable conversations"):
        (tmp_path / "bad.jsonl").write_text("oops\n")
        build_sft_rows(tokenizer, FinetuneConfig(data=str(tmp_path / "bad.jsonl")), tmp_path / "rows2")


# ---------------------------------------------------------------- packing


def test_packed_rows_restart_positions_and_keep_every_label(tmp_path):
    tokenizer = small_tokenizer(tmp_path)
    ids, labels = masked_tokens(tokenizer, MESSAGES)
    seq_len = 2 * len(ids) + 3  # two conversations fit in a row, the third starts a new one
    writer = ShardWriter(tmp_path / "rows", seq_len, np.dtype(np.uint16), 100, with_labels=True, with_positions=True)
    packer = RowPacker(writer, tokenizer.pad_token_id, pack=True)
    for _ in range(3):
        packer.add(ids, labels)
    packer.close()
    shards = TokenShards(tmp_path / "rows")
    assert len(shards) == 2
    rows, row_labels = shards.rows(np.arange(2))
    positions = shards.positions(np.arange(2))
    n = len(ids)
    assert positions[0, :2 * n].tolist() == list(range(n)) * 2
    assert rows[0, n:2 * n].tolist() == ids and row_labels[0, n:2 * n].tolist() == labels
    # Padding ends each row, with no loss.
    assert (row_labels[0, 2 * n:] == IGNORE).all() and (row_labels[1, n:] == IGNORE).all()
    assert (rows[0, 2 * n:] == tokenizer.pad_token_id).all() and (rows[1, n:] == tokenizer.pad_token_id).all()


def test_a_packed_conversation_attends_only_to_itself(tmp_path):
    """Its logits after another conversation in the same row equal its logits alone, and the first
    conversation's are untouched by the one after it: no token sees another conversation. The model
    is called as solo.train.loop.model_inputs calls it: position ids, no attention mask, no KV cache."""
    tokenizer = small_tokenizer(tmp_path)
    first, _ = masked_tokens(tokenizer, MESSAGES)
    second, _ = masked_tokens(tokenizer, [{"role": "user", "content": "And what does sorted do?"},
                                          {"role": "assistant", "content": "Return a new sorted list."}])
    torch.manual_seed(0)
    config = llama_config("demo", vocab_size=len(tokenizer), seq_len=128)
    for attention in ("sdpa", "eager"):
        config._attn_implementation = attention
        model = LlamaForCausalLM(config).eval()
        packed = torch.tensor([first + second])
        positions = torch.tensor([list(range(len(first))) + list(range(len(second)))])
        with torch.no_grad():
            together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]
            alone = model(input_ids=torch.tensor([second]), use_cache=False).logits[0]
            first_alone = model(input_ids=torch.tensor([first]), use_cache=False).logits[0]
            # The same row with a KV cache: transformers no longer reads the restarts.
            cached = model(input_ids=packed, position_ids=positions, use_cache=True).logits[0]
        assert torch.allclose(together[len(first):], alone, atol=1e-5), attention
        assert torch.allclose(together[:len(first)], first_alone, atol=1e-5), attention
        assert not torch.allclose(cached[len(first):], alone, atol=1e-3), attention


def test_masked_tokens_of_a_packed_row_contribute_exactly_zero_gradient(tmp_path):
    tokenizer = small_tokenizer(tmp_path)
    ids, labels = masked_tokens(tokenizer, MESSAGES)
    row, target = torch.tensor([ids + ids]), torch.tensor([labels + labels])
    positions = torch.tensor([list(range(len(ids))) * 2])
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("demo", vocab_size=len(tokenizer), seq_len=128))
    out = model(input_ids=row, position_ids=positions, labels=target, use_cache=False)
    out.logits.retain_grad()
    out.loss.backward()  # transformers' own loss, as training computes it
    logits = out.logits
    per_position = logits.grad[0, :-1].abs().sum(-1)
    masked = target[0, 1:] == IGNORE
    # The prompt of each conversation is masked, and so is the step from one conversation into the next.
    assert masked.any() and (~masked).any() and masked[len(ids) - 1]
    assert (per_position[masked] == 0).all() and (per_position[~masked] > 0).all()
