"""The Ray Serve application: an `LLMServer` replica owns the model, a `Gateway` ingress owns the
OpenAI API and reaches the model through a streaming deployment handle.

Splitting them lets the API scale (and restart) apart from the replica holding the weights, as
Ray Serve LLM does. The logic lives in `solo.serving`; this file only wires it to Serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from solo.serving.config import ServeConfig
from solo.serving.deployment import ModelPlan, build_engine, deployment_options
from solo.serving.engine import Delta, Engine, EngineLoad, SamplingParams, in_messages
from solo.serving.http.app import build_gateway
from solo.serving.http.service import ServedModel
from solo.serving.security import Limits, read_api_keys
from solo.tokens.tokenizer import load


class _LoadedAdapter:
    """What the multiplexed loader caches; Serve calls `__del__` when it evicts one."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __del__(self) -> None:
        self.engine.retire()


@serve.deployment
class LLMServer:
    """One model's replica: its engine, and the LoRA adapters trained on it, each loaded when a
    request first names it (Ray Serve model multiplexing routes such requests to a replica that
    has it loaded, when one has)."""

    def __init__(self, plan: ModelPlan, max_concurrent: int, message_tokens: int, message_delay_s: float):
        self.engine = build_engine(plan, max_concurrent)
        self.message_tokens, self.message_delay_s = message_tokens, message_delay_s
        folders = {adapter.name: adapter.folder for adapter in plan.adapters}

        async def load_adapter(name: str) -> _LoadedAdapter:
            # Reading and merging weights blocks: off the event loop, which streams other requests.
            return _LoadedAdapter(await asyncio.to_thread(self.engine.with_adapter, name, folders[name]))

        # Wired here, not as a decorated method, because the cache size is the model's setting.
        self.adapter = serve.multiplexed(max_num_models_per_replica=plan.settings.max_adapters_per_replica)(
            load_adapter)

    def max_context(self) -> int:
        return self.engine.max_context

    def check_health(self) -> None:  # Serve calls it periodically and replaces a replica it fails
        self.engine.check_health()

    async def load(self) -> EngineLoad:
        return await self.engine.load()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        adapter = serve.get_multiplexed_model_id()  # "": the base model
        engine = (await self.adapter(adapter)).engine if adapter else self.engine
        async for message in in_messages(engine.generate(prompt_ids, params), self.message_tokens,
                                          self.message_delay_s):
            yield message


class RemoteEngine(Engine):
    """The `Engine` interface over an `LLMServer` handle, for the gateway; with `adapter`, the
    server's model with that LoRA adapter applied."""

    def __init__(self, handle: DeploymentHandle, max_context: int, adapter: str | None = None):
        self._handle = handle
        self._stream = handle.options(stream=True, **({"multiplexed_model_id": adapter} if adapter else {}))
        self.max_context = max_context

    async def load(self) -> EngineLoad:
        return await self._handle.load.remote()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        stream = self._stream.generate.remote(prompt_ids, params)
        finished = False
        try:
            async for delta in stream:
                yield delta
            finished = True
        finally:
            if not finished:  # the client left, or a stop string ended it: free the replica's slot
                stream.cancel()


# The gateway only awaits the model server; it takes more than `max_queue` at once so that the
# overflow reaches it and gets a 503 instead of waiting in Serve's proxy.
@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Gateway:
    async def __init__(self, servers: list[DeploymentHandle], plans: list[ModelPlan], max_new_tokens: int,
                       limits: Limits):
        bases, adapters = [], []
        for server, plan in zip(servers, plans):
            tokenizer, max_context = load(plan.folder), await server.max_context.remote()
            tool_parser = plan.settings.tool_parser
            bases.append(ServedModel(plan.name, RemoteEngine(server, max_context), tokenizer, tool_parser=tool_parser))
            adapters += [ServedModel(adapter.name, RemoteEngine(server, max_context, adapter.name), tokenizer,
                                     parent=plan.name, tool_parser=tool_parser) for adapter in plan.adapters]
        self._app = build_gateway(bases + adapters, max_new_tokens=max_new_tokens, limits=limits)

    def __serve_build_asgi_app__(self):
        return self._app


def limits(config: ServeConfig) -> Limits:
    """Read here, on the driver, so only key digests and names travel to the replica."""
    return Limits(api_keys=read_api_keys(config.api_keys_file), rate_limit_rpm=config.rate_limit_rpm,
                  rate_limit_tpm=config.rate_limit_tpm, max_request_bytes=config.max_request_bytes,
                  max_queue=config.max_queue)


def build_app(config: ServeConfig, plans: list[ModelPlan]) -> serve.Application:
    """A deployment per model (`solo.serving.deployment.deployment_options`: replicas, autoscaling,
    GPUs) behind one gateway."""
    servers = [LLMServer.options(name=plan.deployment_name(index), **deployment_options(plan, config)
                                 ).bind(plan, config.max_concurrent, config.stream_interval,
                                       config.stream_max_delay_ms / 1000)
               for index, plan in enumerate(plans)]
    gateway = Gateway.options(max_ongoing_requests=config.max_queue + 64)
    return gateway.bind(servers, plans, config.max_new_tokens, limits(config))
