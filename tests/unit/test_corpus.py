from solo.data import corpus


def test_embedded_corpus_is_real_text_and_reproducible():
    first = list(corpus.documents(max_documents=150))
    again = list(corpus.documents(max_documents=150))
    assert first == again
    assert len(first) == 150
    assert len({d["id"] for d in first}) == 150
    assert sum(len(d["text"]) for d in first) > 200_000
    assert any("statement" in d["text"] for d in first)


def test_instruction_pairs_are_user_then_assistant():
    pairs = list(corpus.instruction_pairs(max_pairs=50))
    assert len(pairs) == 50
    for pair in pairs:
        roles = [m["role"] for m in pair["messages"]]
        assert roles == ["user", "assistant"]
        assert pair["messages"][0]["content"].startswith("What does the ")
        assert 20 <= len(pair["messages"][1]["content"]) <= 600
