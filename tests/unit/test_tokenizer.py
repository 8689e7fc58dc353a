import pytest

from solo.data import corpus
from solo.tokens import tokenizer as tok
from solo.tokens import train_bpe as bpe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    texts = [d["text"] for d in corpus.documents(max_documents=80)]
    folder = tmp_path_factory.mktemp("tok")
    bpe.train_bpe(texts, vocab_size=800, min_frequency=2).save_pretrained(str(folder))
    return tok.load(folder)


CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "42."},
    {"role": "user", "content": "Check the weather in Paris."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "content": "{\"celsius\": 21}"},
    {"role": "assistant", "content": "It is 21 °C."},
]


def test_no_input_is_unknown(trained):
    text = "naïve 東京 🙂 \x07 ünïcödé"
    ids = trained.encode(text, add_special_tokens=False)
    assert trained.unk_token_id is None or trained.unk_token_id not in ids
    assert trained.decode(ids) == text


def test_digits_are_split(trained):
    pieces = trained.convert_ids_to_tokens(trained.encode("2024", add_special_tokens=False))
    assert pieces == ["2", "0", "2", "4"]


def test_mask_covers_exactly_the_assistant_turns(trained):
    ids, mask = tok.render_chat(trained, CONVERSATION)
    learned = trained.decode([i for i, m in zip(ids, mask) if m])
    # Hermes' markup, in special tokens, as vLLM's hermes parser, llama.cpp and Ollama read it.
    assert learned == ("42.<|end|>"
                       '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|end|>'
                       "It is 21 °C.<|end|>")
    assert [trained.convert_tokens_to_ids(t) for t in (tok.TOOL_CALL_OPEN, tok.TOOL_CALL_CLOSE)] == [
        ids[i] for i in range(len(ids)) if trained.convert_ids_to_tokens(ids[i]) in ("<tool_call>", "</tool_call>")]
    not_learned = trained.decode([i for i, m in zip(ids, mask) if not m])
    assert "Check the weather" in not_learned and "42." not in not_learned


@pytest.mark.parametrize("turn", [2, 4, 6])
def test_training_and_serving_render_identical_token_ids(trained, turn):
    """Serving renders the conversation up to an assistant turn with the generation prompt; the ids
    must be exactly those training saw before that turn's first learned token."""
    training_ids, mask = tok.render_chat(trained, CONVERSATION[:turn + 1])
    serving_ids, _ = tok.render_chat(trained, CONVERSATION[:turn], add_generation_prompt=True)
    first_learned = len(mask) - mask[::-1].index(0)  # after the last non-assistant token
    assert serving_ids == training_ids[:first_learned]


def test_tools_render_in_a_system_turn(trained):
    ids, _ = tok.render_chat(trained, CONVERSATION[:2], tools=[{"type": "function", "function": {"name": "weather"}}],
                             add_generation_prompt=True)
    text = trained.decode(ids)
    assert text.startswith("<|system|>You can call these tools") and '"weather"' in text
    assert text.endswith("<|assistant|>")


def test_generation_stops_at_end_of_turn(trained):
    stops = tok.stop_token_ids(trained)
    assert trained.convert_tokens_to_ids(tok.END_OF_TURN) in stops
    assert trained.eos_token_id in stops
