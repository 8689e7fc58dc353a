"""The Ray Serve application: an `LLMServer` replica owns the model, a `Gateway` ingress owns the
OpenAI API and reaches the model through a streaming deployment handle.

Splitting them lets the API scale (and restart) apart from the replica holding the weights, as
Ray Serve LLM does. The logic lives in `solo.serving`; this file only wires it to Serve.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from solo.config import ServeConfig
from solo.serving.engine import Delta, Engine, EngineLoad, SamplingParams
from solo.serving.run import model_folder, served_name
from solo.serving.security import Limits, read_key_digests


@serve.deployment
class LLMServer:
    def __init__(self, model_dir: str, max_concurrent: int):
        # Imported here so the driver, which only builds the app, never loads torch.
        from solo.serving.cpu_engine import CpuEngine

        self.engine = CpuEngine(model_dir, max_concurrent)

    def max_context(self) -> int:
        return self.engine.max_context

    async def load(self) -> EngineLoad:
        return await self.engine.load()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        async for delta in self.engine.generate(prompt_ids, params):
            yield delta


class RemoteEngine(Engine):
    """The `Engine` interface over an `LLMServer` handle, for the gateway."""

    def __init__(self, handle: DeploymentHandle, max_context: int):
        self._handle = handle
        self._stream = handle.options(stream=True)
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
    async def __init__(self, server: DeploymentHandle, model_dir: str, model_name: str, max_new_tokens: int,
                       limits: Limits):
        from solo.serving.gateway import build_gateway
        from solo.tokenizer import load

        engine = RemoteEngine(server, await server.max_context.remote())
        self._app = build_gateway(engine, load(model_dir), model_name=model_name, max_new_tokens=max_new_tokens,
                                  limits=limits)

    def __serve_build_asgi_app__(self):
        return self._app


def limits(config: ServeConfig) -> Limits:
    """Read here, on the driver, so only key digests travel to the replica."""
    return Limits(key_digests=read_key_digests(config.api_keys_file), rate_limit_rpm=config.rate_limit_rpm,
                  max_request_bytes=config.max_request_bytes, max_queue=config.max_queue)


def build_app(config: ServeConfig) -> serve.Application:
    model_dir = str(model_folder(config))
    # The engine batches up to max_concurrent sequences and queues the rest itself (its queue
    # depth is a metric); the gateway's max_queue bounds the total, so Serve need not queue.
    server = LLMServer.options(max_ongoing_requests=config.max_queue,
                               ray_actor_options={"num_cpus": config.replica_cpus}
                               ).bind(model_dir, config.max_concurrent)
    gateway = Gateway.options(max_ongoing_requests=config.max_queue + 64)
    return gateway.bind(server, model_dir, served_name(config), config.max_new_tokens, limits(config))
