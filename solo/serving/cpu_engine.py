"""Continuous batching on CPU over a stock Hugging Face causal LM: any architecture the installed transformers
knows (Llama, Qwen2 and 3, Mistral, Gemma, Phi-3, ...), loaded with `AutoModelForCausalLM`.

One scheduler task per event loop owns every running sequence. Each iteration prefills the
requests that arrived since the last one (together, left-padded) and advances every running
sequence by one token in a single batched forward, so sixteen clients cost about as many matrix
multiplies as one: a decode step is bound by reading the weights, not by the batch size.

The running sequences share one KV cache, right-aligned: row i's tokens fill the last
`length_i` columns and the columns before them are padding the attention mask hides. Sequences
join by padding the shorter side on the left, leave by dropping their row, and columns that
only padding still occupies are cut away, so the cache never grows past the longest sequence.

Every layer's cache keeps all its columns, sliding-window layers too (Mistral's, Gemma's): joining, leaving
and cutting columns assume it. Such a model still attends within its window (its mask says so); its cache
only does not drop what falls out of the window, as a full-attention model's never does.

Forward passes run on one worker thread: torch already spreads a pass over every core it is
given, and the event loop stays free to stream tokens and take new requests meanwhile.

Weights are computed in fp32 whatever the checkpoint holds: bf16 and fp16 checkpoints are upcast as they
load, since half-precision matrix multiplies on a CPU without AVX-512 BF16 or AMX run many times slower
than fp32 ones (and fp16 ones are not implemented for every operation).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from solo.serving.engine import Delta, Engine, EngineLoad, SamplingParams, TokenLogprob, drain
from solo.serving.grammar import Grammars

log = logging.getLogger(__name__)


def cpu_budget() -> int:
    """Ray exports OMP_NUM_THREADS as an actor's `num_cpus`; outside Ray, every core we may use."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(eq=False)
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    budget: int  # tokens it may still produce: max_tokens, capped by the context window
    out: asyncio.Queue  # Delta, or the exception that ended it
    rng: torch.Generator
    counts: collections.Counter = field(default_factory=collections.Counter)  # for the penalties
    produced: int = 0
    last_token: int = -1  # sampled, not yet fed back
    abandoned: bool = False  # its consumer went away
    grammar: Any = None  # an xgrammar GrammarMatcher when the output is constrained


class _Batch:
    """The running sequences and their shared, right-aligned KV cache."""

    def __init__(self) -> None:
        self.sequences: list[_Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, columns]: 1 where a real token is
        self.positions = torch.zeros(0, dtype=torch.long)  # the next position of each row

    def __len__(self) -> int:
        return len(self.sequences)

    def keep(self, rows: list[int]) -> None:
        if len(rows) == len(self.sequences):
            return
        self.sequences = [self.sequences[i] for i in rows]
        if not rows:
            self.__init__()
            return
        index = torch.tensor(rows)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.cache.batch_select_indices(index)
        # Cut the leading columns no row uses any more.
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def join(self, other: _Batch) -> None:
        if not self.sequences:
            self.sequences, self.cache, self.mask, self.positions = (
                other.sequences, other.cache, other.mask, other.positions)
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        self.positions = torch.cat([self.positions, other.positions])
        self.sequences += other.sequences


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero columns before the time axis's first: dim 1 of a mask, dim 2 of keys and values."""
    time_dim = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[time_dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[time_dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=time_dim)


class CpuEngine(Engine):
    def __init__(self, model: str | Path | PreTrainedModel, max_concurrent: int = 16, threads: int | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None):
        """`model`: a model folder, or a model already loaded (an evaluation shares its own). The
        tokenizer (the folder's, unless given) is needed only for grammar-constrained output."""
        torch.set_num_threads(threads or cpu_budget())
        load_tokenizer = lambda: tokenizer  # noqa: E731
        if not isinstance(model, torch.nn.Module):
            folder, model = str(model), AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
            if tokenizer is None:
                load_tokenizer = lambda: AutoTokenizer.from_pretrained(folder)  # noqa: E731
        self.model = model.eval()
        # A multimodal checkpoint's language model keeps its settings in a text config of its own.
        text_config = self.model.config.get_text_config(decoder=True)
        self.max_context = text_config.max_position_embeddings
        self.max_batch = max_concurrent  # every running sequence holds a row of the KV cache
        self._forward = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-engine")
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._batch = _Batch()
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self._load_tokenizer = load_tokenizer
        self._grammars = Grammars(load_tokenizer, text_config.vocab_size)
        self._retired = False

    def with_adapter(self, name: str, folder: str) -> CpuEngine:
        """A copy of the model with the adapter merged into its weights: one batched forward runs
        one set of weights, so requests of different adapters cannot share it; merged, an adapter
        costs its copy's memory and nothing per token. Forward passes stay on this engine's one
        thread, so adapters share the replica's cores instead of fighting over them."""
        # peft imports bitsandbytes, which takes seconds and on a CPU probes the hub for kernels: only a
        # replica that serves an adapter pays for it.
        from peft import PeftModel

        merged = PeftModel.from_pretrained(copy.deepcopy(self.model), folder).merge_and_unload()
        engine = CpuEngine(merged, self.max_batch, threads=torch.get_num_threads(), tokenizer=self._load_tokenizer())
        engine._forward = self._forward
        return engine

    def retire(self) -> None:
        self._retired = True
        scheduler = self._scheduler
        if scheduler is not None and not scheduler.done():
            try:
                scheduler.get_loop().call_soon_threadsafe(self._wakeup.set)
            except RuntimeError:  # its loop is closed: nothing runs
                pass

    async def load(self) -> EngineLoad:
        return EngineLoad(waiting=sum(not s.abandoned for s in self._waiting), running=len(self._batch))

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        if not 0 < len(prompt_ids) < self.max_context:
            raise ValueError(f"a prompt must have 1 to {self.max_context - 1} tokens, not {len(prompt_ids)}")
        rng = torch.Generator()
        if params.seed is None:
            rng.seed()
        else:
            rng.manual_seed(params.seed)
        sequence = _Sequence(list(prompt_ids), params, min(params.max_tokens, self.max_context - len(prompt_ids)),
                             asyncio.Queue(), rng)
        if params.json_schema is not None:
            sequence.grammar = self._grammars.matcher(params.json_schema, params.stop_token_ids)
        self._ensure_scheduler()
        self._waiting.append(sequence)
        self._wakeup.set()
        try:
            async for delta in drain(sequence.out):
                yield delta
        finally:
            sequence.abandoned = True  # the scheduler drops it before its next step

    def _ensure_scheduler(self) -> None:
        """One scheduler per event loop; a new loop (a test's next `asyncio.run`) starts afresh."""
        loop = asyncio.get_running_loop()
        if self._scheduler is not None and self._scheduler.get_loop() is loop and not self._scheduler.done():
            return
        self._waiting.clear()
        self._batch = _Batch()
        self._wakeup = asyncio.Event()
        self._scheduler = loop.create_task(self._schedule(), name="cpu-engine-scheduler")

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._batch.keep([i for i, s in enumerate(self._batch.sequences) if not s.abandoned])
            joining = []
            while self._waiting and len(self._batch) + len(joining) < self.max_batch:
                sequence = self._waiting.popleft()
                if not sequence.abandoned:
                    joining.append(sequence)
            if not joining and not self._batch.sequences:
                if self._retired:  # a generation that comes later starts a scheduler again
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            running = list(self._batch.sequences)
            try:
                # A cancelled await leaves the step to finish on the thread; its results are dropped
                # with the sequences that no longer want them.
                logits = await loop.run_in_executor(self._forward, self._step, joining)
            except Exception as error:
                log.exception("a forward pass failed")
                for sequence in running + joining:
                    sequence.out.put_nowait(error)
                self._batch = _Batch()
                continue
            finished = {i for i, s in enumerate(self._batch.sequences) if self._emit(s, logits[i])}
            self._batch.keep([i for i in range(len(self._batch)) if i not in finished])

    @torch.inference_mode()
    def _step(self, joining: list[_Sequence]) -> torch.Tensor:
        """Logits [rows, vocab] for the next token of every running sequence, old rows then new."""
        logits = []
        if self._batch.sequences:
            batch = self._batch
            batch.mask = torch.cat([batch.mask, torch.ones(len(batch), 1, dtype=torch.long)], dim=1)
            out = self.model(input_ids=torch.tensor([[s.last_token] for s in batch.sequences]),
                             attention_mask=batch.mask, position_ids=batch.positions[:, None],
                             past_key_values=batch.cache, use_cache=True)
            batch.positions = batch.positions + 1
            logits.append(out.logits[:, -1])
        if joining:
            newcomers, first = self._prefill(joining)
            logits.append(first)
            self._batch.join(newcomers)
        return torch.cat(logits)

    def _prefill(self, joining: list[_Sequence]) -> tuple[_Batch, torch.Tensor]:
        width = max(len(s.prompt_ids) for s in joining)
        ids = torch.tensor([[0] * (width - len(s.prompt_ids)) + s.prompt_ids for s in joining])
        mask = torch.tensor([[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in joining])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        batch = _Batch()
        batch.sequences, batch.mask, batch.positions = list(joining), mask, mask.sum(1)
        batch.cache = DynamicCache()  # full-attention layers, made as the forward pass fills them (module doc)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=batch.cache,
                         use_cache=True, logits_to_keep=1)
        return batch, out.logits[:, -1]

    def _emit(self, sequence: _Sequence, logits: torch.Tensor) -> bool:
        """Sample the sequence's next token and hand it over; True when the sequence is done."""
        if sequence.abandoned:
            return True
        model_logits = logits
        logits = penalize(logits, sequence.counts, sequence.params)
        if sequence.grammar is not None:
            logits = self._grammars.mask(sequence.grammar, logits)
        token = sample(logits, sequence.params.temperature, sequence.params.top_p, sequence.rng)
        logprobs = None if sequence.params.logprobs is None else [
            token_logprob(model_logits, token, sequence.params.logprobs)]
        sequence.produced += 1
        sequence.counts[token] += 1
        sequence.last_token = token
        if sequence.grammar is not None and not sequence.grammar.accept_token(token):
            raise RuntimeError(f"the grammar refused token {token} that its own mask allowed")
        if token in sequence.params.stop_token_ids:
            finish = "stop"
        elif sequence.produced >= sequence.budget:
            finish = "length"
        else:
            finish = None
        sequence.out.put_nowait(Delta([token], finish, logprobs))
        return finish is not None


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, top) if top else None
    return TokenLogprob(token, float(logprobs[token]),
                        [] if best is None else list(zip(best.indices.tolist(), best.values.tolist())))


def penalize(logits: torch.Tensor, counts: collections.Counter, params: SamplingParams) -> torch.Tensor:
    """OpenAI's presence and frequency penalties over the tokens generated so far."""
    if not counts or not (params.presence_penalty or params.frequency_penalty):
        return logits
    ids = torch.tensor(list(counts))
    seen = torch.tensor(list(counts.values()), dtype=logits.dtype)
    logits = logits.clone()
    logits[ids] -= params.presence_penalty + params.frequency_penalty * seen
    return logits


def sample(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        probs, order = probs.sort(descending=True)
        # The smallest set of likeliest tokens whose mass reaches top_p; never empty.
        probs = probs * (probs.cumsum(0) - probs < top_p)
        return int(order[torch.multinomial(probs, 1, generator=rng)])
    return int(torch.multinomial(probs, 1, generator=rng))
