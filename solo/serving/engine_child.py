"""The CPU engine's own process (solo.serving.engine_process starts it): `python -m solo.serving.engine_child FD
FOLDER MAX_CONCURRENT THREADS` loads a `CpuEngine` on the model folder and answers the replica over the socket
`FD`, in the protocol engine_process.py describes, until the replica closes it."""

from __future__ import annotations

import asyncio
import logging
import pickle
import sys
from multiprocessing.connection import Connection

from solo.serving.cpu_engine import CpuEngine
from solo.serving.engine import Delta, Engine, SamplingParams

log = logging.getLogger(__name__)


def _portable(error: BaseException) -> BaseException:
    """The exception itself when it survives pickling (a ValueError for a bad request stays one)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


async def serve_engine(connection: Connection, base: Engine) -> None:
    """The engine process's side of the protocol, until the connection closes."""
    engines: dict[str, Engine] = {"": base}
    connection.send(("ready", base.max_context))

    loop = asyncio.get_running_loop()
    closed = loop.create_future()
    generations: dict[int, asyncio.Task] = {}
    outbox: list[tuple[int, Delta | BaseException]] = []

    def flush() -> None:
        # Scheduled by the first delta of a step, it runs after every sequence's delta is in.
        items = list(outbox)
        outbox.clear()
        try:
            connection.send(("deltas", items))
        except OSError:  # the replica is gone: receive() sees it and ends the process
            pass

    def post(request_id: int, item: Delta | BaseException) -> None:
        if not outbox:
            loop.call_soon(flush)
        outbox.append((request_id, item))

    async def relay(request_id: int, engine: Engine, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            async for delta in engine.generate(prompt_ids, params):
                post(request_id, delta)
        except Exception as error:
            post(request_id, _portable(error))
        finally:
            generations.pop(request_id, None)

    async def load_adapter(name: str, adapter_folder: str) -> None:
        try:
            engines[name] = await asyncio.to_thread(base.with_adapter, name, adapter_folder)
            failure = None
        except Exception as error:
            log.exception("could not load adapter %s", name)
            failure = f"{type(error).__name__}: {error}"
        try:
            connection.send(("adapter", name, failure))
        except OSError:
            pass

    def receive() -> None:
        try:
            message = connection.recv()
        except (EOFError, OSError):  # the replica is gone, or closed us
            loop.remove_reader(connection.fileno())
            closed.set_result(None)
            return
        kind = message[0]
        if kind == "generate":
            _, request_id, adapter, prompt_ids, params = message
            engine = engines.get(adapter)
            if engine is None:
                post(request_id, RuntimeError(f"adapter {adapter} is not loaded in the engine"))
            else:
                generations[request_id] = loop.create_task(relay(request_id, engine, prompt_ids, params))
        elif kind == "abort":
            generation = generations.pop(message[1], None)
            if generation is not None:
                generation.cancel()
        elif kind == "adapter":
            loop.create_task(load_adapter(message[1], message[2]))
        elif kind == "retire":
            adapter = engines.pop(message[1], None)
            if adapter is not None:
                adapter.retire()

    loop.add_reader(connection.fileno(), receive)
    await closed


def main() -> None:
    fd, folder, max_concurrent, threads = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    connection = Connection(int(fd))
    try:
        engine = CpuEngine(folder, int(max_concurrent), int(threads) or None)  # None: its cpu_budget()
    except Exception as error:
        log.exception("could not load %s", folder)
        connection.send(("failed", f"{type(error).__name__}: {error}"))
        sys.exit(1)
    try:
        asyncio.run(serve_engine(connection, engine))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
