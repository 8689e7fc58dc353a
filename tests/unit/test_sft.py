import torch
from transformers import LlamaForCausalLM

from solo import corpus
from solo import tokenizer as tok
from solo.model import llama_config
from solo.sft import masked_row
from solo.tokens import IGNORE

MESSAGES = [{"role": "user", "content": "What does len do?"},
            {"role": "assistant", "content": "Return the number of items in a container."}]


def small_tokenizer(tmp_path):
    tok.train_bpe([d["text"] for d in corpus.documents(max_documents=40)], 600, 2).save_pretrained(str(tmp_path))
    return tok.load(tmp_path)


def test_labels_only_on_assistant_tokens_and_padding_ignored(tmp_path):
    tokenizer = small_tokenizer(tmp_path)
    ids, labels = masked_row(tokenizer, MESSAGES, seq_len=64)
    assert len(ids) == len(labels) == 64
    learned = tokenizer.decode([i for i in labels if i != IGNORE])
    assert learned == "Return the number of items in a container.<|end|>"
    assert ids[-1] == tokenizer.pad_token_id and labels[-1] == IGNORE


def test_masked_tokens_contribute_exactly_zero_gradient(tmp_path):
    tokenizer = small_tokenizer(tmp_path)
    ids, labels = masked_row(tokenizer, MESSAGES, seq_len=48)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("demo", vocab_size=len(tokenizer), seq_len=48))
    input_ids, target = torch.from_numpy(ids)[None], torch.from_numpy(labels)[None]
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


def test_a_conversation_with_no_assistant_token_left_is_skipped(tmp_path):
    tokenizer = small_tokenizer(tmp_path)
    assert masked_row(tokenizer, MESSAGES, seq_len=4) is None
