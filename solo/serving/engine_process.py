"""The CPU engine in a process of its own, as vLLM runs its engine core apart from its API server.

In the Serve replica's process, the forward passes shared an interpreter lock with Ray Serve's own
threads (its event loops, metrics and control calls). In a child process the engine has an
interpreter to itself, and the replica only relays token ids: one message per decode step,
however many sequences it advanced. The replica asks Ray for niceness 0 (`plan.deployment_options`),
which the child inherits: Ray starts workers at 15, where any client or Ray daemon on the engine's
core would take it over. On two cores, a random 125m Llama at 16 clients served 91 tokens/s
through HTTP with the engine in the replica, against 138 from the engine alone; now 116 against
140 (`benchmarks/results/serve_cpu.md`).

The two talk in pickled tuples over a socket pair (the engine's side is solo.serving.engine_child):

    replica -> engine   ("generate", id, adapter, prompt_ids, params)   adapter "" is the base
                        ("abort", id)                                   its consumer went away
                        ("adapter", name, folder) / ("retire", name)    load / drop an adapter
    engine -> replica   ("ready", max_context) / ("failed", why)        once, after loading
                        ("deltas", [(id, Delta or the exception that ended it), ...])
                        ("adapter", name, None or why it failed)

The engine exits when its socket closes, so it never outlives the replica, however that ends.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from solo.serving.engine import Delta, Engine, EngineLoad, SamplingParams, drain

log = logging.getLogger(__name__)

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # where `solo` imports from, for the child
_STOP_WAIT_S = 10.0


@dataclass(eq=False)
class _Request:
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    started: bool = False  # a delta came: it is in the running batch


class EngineProcess(Engine):
    """A `CpuEngine` on the model folder, run by `python -m solo.serving.engine_child` in a
    child process. Construction returns once the model is loaded, or raises why it could not be."""

    def __init__(self, folder: str | Path, max_concurrent: int, threads: int | None = None):
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_SOURCE_ROOT),
                                                                           os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "solo.serving.engine_child", str(theirs.fileno()), str(folder),
                   str(max_concurrent), str(threads or 0)]
        self._process = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        # Shutting down `_socket` wakes the reader thread's blocked recv on the connection's copy
        # of it, which closing a descriptor another thread reads from would not.
        self._socket, self._connection = ours, Connection(os.dup(ours.fileno()))
        self._send_lock = threading.Lock()  # adapters load from threads while the event loop sends
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count()
        self._adapter_replies: dict[str, Future] = {}
        self._ended: str | None = None  # why the engine can serve no more
        self._retired = False
        try:
            self.max_context = self._await_ready()
        except BaseException:
            self._socket.close()
            self._connection.close()
            _stop(self._process)
            raise
        self._reader = threading.Thread(target=self._read, name="engine-process-reader", daemon=True)
        self._reader.start()

    def _await_ready(self) -> int:
        while not self._connection.poll(1.0):
            if self._process.poll() is not None:
                raise RuntimeError(f"the CPU engine's process exited with code {self._process.returncode} "
                                   "while loading the model: its log is above")
        try:
            kind, detail = self._connection.recv()
        except EOFError:
            raise RuntimeError(f"the CPU engine's process exited with code {self._process.wait()} "
                               "while loading the model: its log is above") from None
        if kind != "ready":
            raise RuntimeError(f"the CPU engine could not load the model: {detail}")
        return detail

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self._connection.send(message)
        except OSError:
            raise RuntimeError(self._ended or "the CPU engine's process is gone") from None

    def _read(self) -> None:
        """The reader thread: hands each step's deltas to the event loops awaiting them."""
        try:
            while True:
                message = self._connection.recv()
                if message[0] == "deltas":
                    self._deliver(message[1])
                elif message[0] == "adapter":
                    self._adapter_replies.pop(message[1]).set_result(message[2])
        except (EOFError, OSError):
            pass
        self._connection.close()
        code = _stop(self._process)
        if self._ended is None:  # not closed by us: it died
            self._ended = f"the CPU engine's process ended with exit code {code}"
            log.error("%s", self._ended)
        error = RuntimeError(self._ended)
        self._deliver([(request_id, error) for request_id in list(self._requests)])
        for reply in list(self._adapter_replies.values()):
            reply.set_result(self._ended)

    def _deliver(self, items: list[tuple[int, Delta | BaseException]]) -> None:
        # One wake-up per event loop and step, not one per sequence.
        by_loop = collections.defaultdict(list)
        for request_id, item in items:
            request = self._requests.get(request_id)
            if request is not None:
                request.started = True
                by_loop[request.loop].append((request.out, item))
        for loop, puts in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, puts)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    async def load(self) -> EngineLoad:
        requests = list(self._requests.values())
        running = sum(request.started for request in requests)
        return EngineLoad(waiting=len(requests) - running, running=running)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        return self._generate("", prompt_ids, params)

    async def _generate(self, adapter: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        self.check_health()
        request_id, request = next(self._ids), _Request(asyncio.get_running_loop())
        self._requests[request_id] = request
        finished = False
        try:
            self._send(("generate", request_id, adapter, list(prompt_ids), params))
            async for delta in drain(request.out):
                finished = delta.finish_reason is not None
                yield delta
        finally:
            del self._requests[request_id]
            if not finished and self._ended is None:
                try:
                    self._send(("abort", request_id))
                except RuntimeError:  # the process is gone, and the generation with it
                    pass
            if self._retired and not self._requests:
                self.close(wait=False)  # on the event loop: the reader thread waits for the exit

    def with_adapter(self, name: str, folder: str) -> Engine:
        """Merged into a copy of the weights in the engine's process (`CpuEngine.with_adapter`);
        blocks until it is, so call it off the event loop."""
        self.check_health()
        reply = self._adapter_replies[name] = Future()
        self._send(("adapter", name, folder))
        failure = reply.result()
        if failure is not None:
            raise RuntimeError(f"adapter {name} could not be loaded: {failure}")
        return _Adapter(self, name)

    def retire(self) -> None:
        self._retired = True
        if not self._requests:
            self.close(wait=False)

    def check_health(self) -> None:
        if self._ended is not None:
            raise RuntimeError(self._ended)

    def close(self, wait: bool = True) -> None:
        """Stop the engine's process now, and with `wait`, return once it is gone."""
        self._ended = self._ended or "the CPU engine was closed"
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # the process sees its socket close, and exits
        except OSError:  # already shut down
            pass
        self._socket.close()
        if wait:
            self._reader.join()


class _Adapter(Engine):
    """The engine process's base model with a LoRA adapter merged, loaded there."""

    def __init__(self, base: EngineProcess, name: str):
        self._base, self._name = base, name
        self.max_context = base.max_context

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        return self._base._generate(self._name, prompt_ids, params)

    def retire(self) -> None:
        if self._base._ended is None:
            self._base._send(("retire", self._name))

    def check_health(self) -> None:
        self._base.check_health()


def _stop(process: subprocess.Popen) -> int:
    """Its exit code, once it has exited; killed if it has not within `_STOP_WAIT_S`."""
    try:
        return process.wait(_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("the CPU engine's process did not exit within %.0f s: killing it", _STOP_WAIT_S)
        process.kill()
        return process.wait()


def _put_all(puts: list[tuple[asyncio.Queue, Delta | BaseException]]) -> None:
    for queue, item in puts:
        queue.put_nowait(item)
