"""What the time-to-quality benchmarks share: nanoGPT's CPU recipe as the peer (re-implemented here from its
README's description, not copied), and solo's side (a BPE, packed rows, `run_training` under a time budget),
both scored as bits per byte on held-out text. Used by `shakespeare_vs_nanogpt` and `wikitext2_vs_nanogpt`.

The peer is nanoGPT's `train_shakespeare_char` recipe as its README gives it for a CPU
(`--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`): a character-level GPT (4
layers, 4 heads, 128 wide, learned positions, pre-LayerNorm without biases, GELU MLP, tied embeddings),
random blocks of 64 characters, batch 12, AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1 on matrices), 100
warm-up iterations, cosine decay to 1e-4, clipping at 1, an estimate of both losses every 250 iterations on
20 batches, all torch threads.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from solo.evals.bpb import bits_per_byte
from solo.evals.model import load_model
from solo.tokens import train_bpe as bpe
from solo.tokens.shards import ShardWriter, pack, token_dtype
from solo.train.config import TrainConfig
from solo.train.job import TrainJob
from solo.train.launch import run_training

# Seconds a solo run goes on after its budget: the export, and Ray Train stopping its workers. Its
# `max_minutes` is the peer's time less this, so its whole run, timed, is no longer than the peer's.
SOLO_TAIL_S = 8.0


# ---------------------------------------------------------------- the peer: nanoGPT's CPU recipe, clean-room


class CharGPT(nn.Module):
    def __init__(self, vocab: int, block: int = 64, layers: int = 4, heads: int = 4, width: int = 128):
        super().__init__()
        self.block, self.heads = block, heads
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(block, width)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(width, bias=False), "qkv": nn.Linear(width, 3 * width, bias=False),
            "out": nn.Linear(width, width, bias=False), "norm2": nn.LayerNorm(width, bias=False),
            "up": nn.Linear(width, 4 * width, bias=False), "down": nn.Linear(4 * width, width, bias=False),
        }) for _ in range(layers))
        self.norm = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tokens.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Residual projections start smaller, as GPT-2 does, so the stream's variance stays put.
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = ids.shape
        x = self.tokens(ids) + self.positions(torch.arange(t))
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["norm1"](x)).split(x.shape[-1], dim=2)
            q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
            x = x + layer["out"](attended)
            x = x + layer["down"](F.gelu(layer["up"](layer["norm2"](x))))
        logits = self.head(self.norm(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def peer_lr(it: int, iters: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100) -> float:
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    progress = min(1.0, (it - warmup) / max(1, iters - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


class CharCodec:
    """The peer's vocabulary: every character of the texts it is given."""

    def __init__(self, *texts: str):
        self.chars = sorted(set().union(*map(set, texts)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], dtype=np.uint16)


def run_peer(train: np.ndarray, val: np.ndarray, vocab: int, iters: int, eval_every: int = 250,
             eval_iters: int = 20, batch: int = 12, block: int = 64) -> dict:
    torch.manual_seed(1337)
    rng = np.random.default_rng(1337)

    def sample(data: np.ndarray):
        starts = rng.integers(0, len(data) - block - 1, batch)
        x = torch.from_numpy(np.stack([data[s:s + block] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[s + 1:s + 1 + block] for s in starts]).astype(np.int64))
        return x, y

    model = CharGPT(vocab, block)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    curve = []
    started = time.perf_counter()
    for it in range(iters + 1):
        if it % eval_every == 0 or it == iters:
            model.eval()
            with torch.no_grad():
                losses = {split: float(np.mean([model(*sample(data))[1].item() for _ in range(eval_iters)]))
                          for split, data in (("train", train), ("val", val))}
            model.train()
            curve.append({"iter": it, "seconds": round(time.perf_counter() - started, 2), **losses})
            print(f"peer iter {it}: train {losses['train']:.4f} val {losses['val']:.4f} nats/char", flush=True)
        if it == iters:
            break
        for group in optimizer.param_groups:
            group["lr"] = peer_lr(it, iters)
        _, loss = model(*sample(train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    seconds = time.perf_counter() - started
    return {"model": model, "seconds": seconds, "curve": curve,
            "parameters": sum(p.numel() for p in model.parameters())}


def peer_iters_for(seconds: float, train: np.ndarray, val: np.ndarray, vocab: int, probe_iters: int = 100) -> int:
    """The iterations of the recipe that fill `seconds`, its evaluations included: timed on a short run
    (whose evaluation at iteration 0 is one of the 1 + iters/250 the full run makes)."""
    probe = run_peer(train, val, vocab, probe_iters, eval_every=probe_iters + 1)
    eval_s = probe["curve"][0]["seconds"]
    iter_s = (probe["seconds"] - 2 * eval_s) / probe_iters
    iters = seconds / (iter_s + eval_s / 250)
    return max(1, int(iters))


@torch.no_grad()
def peer_nats(model: CharGPT, val: np.ndarray, block: int = 64, batch: int = 64) -> float:
    """Summed NLL (nats) of every held-out character after the first, in windows of `block`."""
    model.eval()
    ids = torch.from_numpy(val.astype(np.int64))
    windows = [ids[s:s + block + 1] for s in range(0, len(ids) - 1, block)]
    total = 0.0
    full = [w for w in windows if len(w) == block + 1]
    for i in range(0, len(full), batch):
        rows = torch.stack(full[i:i + batch])
        logits, _ = model(rows[:, :-1])
        total += F.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="sum").item()
    for row in windows[len(full):]:  # the last window, shorter
        logits, _ = model(row[:-1].unsqueeze(0))
        total += F.cross_entropy(logits[0], row[1:], reduction="sum").item()
    return total


# ---------------------------------------------------------------- solo


def build_tokens(folder: Path, train_text: str, val_text: str, vocab_size: int, seq_len: int) -> dict:
    """A byte-level BPE trained on the training text, and both texts packed into rows of `seq_len`."""
    tokenizer = bpe.train_bpe([train_text], vocab_size=vocab_size, min_frequency=2)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    dtype = token_dtype(len(tokenizer))
    counts = {}
    for split, text in (("train", train_text), ("val", val_text)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows, _ = pack([ids], tokenizer.eos_token_id, seq_len, dtype)
        writer = ShardWriter(folder / "tokens" / split, seq_len, dtype, rows_per_shard=8192)
        for row in rows:
            writer.add(row)
        writer.close()
        counts[split] = len(ids)
    return {"train_tokens": counts["train"], "val_tokens": counts["val"],
            "val_bytes_per_token": len(val_text.encode()) / counts["val"]}


def run_solo(config: TrainConfig, folder: Path, name: str, val_bytes_per_token: float) -> dict:
    """`run_training` on the rows in `folder` (Ray must be up), timed whole."""
    output = folder / name
    output.mkdir()
    started = time.perf_counter()
    run_training(TrainJob(config=config, train_dir=str(folder / "tokens" / "train"),
                          val_dir=str(folder / "tokens" / "val"), tokenizer_dir=str(folder / "tokenizer"),
                          output_dir=str(output), val_bytes_per_token=val_bytes_per_token))
    seconds = time.perf_counter() - started
    rows = list(csv.DictReader((output / "metrics.csv").open()))
    return {"seconds": seconds, "rows": rows, "output": output}


def solo_scores(output: Path, val_text: str, seq_len: int) -> dict:
    """The exported model's bits per byte on the whole held-out text, and its parameter count."""
    model, tokenizer = load_model(output / "model")
    scores = bits_per_byte(model, tokenizer, [val_text], seq_len=seq_len)
    return {"val_bpb": round(scores["bits_per_byte"], 4), "parameters": model.num_parameters(),
            "vocab_size": len(tokenizer)}


def budget_minutes(seconds: float) -> float:
    """The `max_minutes` that makes a solo run, timed whole, take `seconds`."""
    return max(0.1, (seconds - SOLO_TAIL_S) / 60)
