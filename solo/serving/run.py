"""Start the Serve application, wait until it answers, and stop exactly what was started."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve

from services.openai_app import build_app
from solo.errors import SoloError
from solo.runtime import init_ray
from solo.serving.config import ServeConfig
from solo.serving.deployment import ModelPlan, plan_models, replica_cpus_needed
from solo.serving.security import KEYS_ENV, is_loopback, read_api_keys

APP_NAME = "solo"
READY_TIMEOUT_S = 120.0


def refuse_open_exposure(config: ServeConfig) -> None:
    """Beyond loopback, anyone on the network could spend this machine: not without API keys."""
    try:
        keys = read_api_keys(config.api_keys_file)
    except OSError as e:
        raise SoloError(f"cannot read the API keys file {config.api_keys_file}: {e.strerror}") from None
    if not is_loopback(config.host) and not keys:
        raise SoloError(f"refusing to listen on {config.host} with no API keys: set {KEYS_ENV} or api_keys_file, "
                        "or serve on 127.0.0.1")


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so a socket of a server that just stopped (TIME_WAIT) does not count as in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise SoloError(f"port {port} on {host} is in use: pass --port N or stop what is using it") from None


def _client_host(host: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def wait_until_healthy(root: str, timeout_s: float, server: subprocess.Popen | None = None) -> None:
    """Return once `root`/health answers 200. With `server`, the process that serves it: its exit
    ends the wait at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server is not None and server.poll() is not None:
            raise SoloError(f"the server exited with code {server.returncode} before it answered on {root}/health")
        try:
            with urllib.request.urlopen(f"{root}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise SoloError(f"the server did not answer on {root}/health within {timeout_s:.0f}s")
        time.sleep(0.25)


@contextmanager
def _ray_session() -> Iterator[None]:
    """Ray for as long as we serve: the cluster `solo up` started or RAY_ADDRESS names, else a
    private local one (`solo.runtime.init_ray`), left as it was found on the way out."""
    if ray.is_initialized():  # the caller's Ray: theirs to shut down
        yield
        return
    on_sigterm = signal.getsignal(signal.SIGTERM)
    init_ray()
    if threading.current_thread() is threading.main_thread():
        # ray.init hands SIGTERM to a handler that aborts the process, skipping every cleanup
        # (and leaving a Ray we started running): put back the caller's, or else exit cleanly.
        signal.signal(signal.SIGTERM, on_sigterm if callable(on_sigterm) else _exit_on_signal)
    try:
        yield
    finally:
        ray.shutdown()  # stops a Ray we started; only disconnects from a cluster we joined
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)


def check_resources(plans: list[ModelPlan], config: ServeConfig, available: dict, cluster: dict) -> None:
    """Serve would wait forever, silently, for a replica's CPUs or GPUs that no node has free."""
    cpus = replica_cpus_needed(plans, config)
    if available.get("CPU", 0) < cpus:
        raise SoloError(f"the Ray cluster has {available.get('CPU', 0):g} free CPUs and the model replicas need "
                        f"{cpus:g}: wait for its jobs to finish, or lower replicas or replica_cpus")
    for plan in plans:
        if plan.engine == "vllm" and cluster.get("GPU", 0) < plan.settings.num_gpus:
            raise SoloError(f"model {plan.name!r} runs on vLLM with {plan.settings.num_gpus:g} GPUs a replica and "
                            f"the Ray cluster has {cluster.get('GPU', 0):g}: join a node with GPUs, or set engine: cpu")


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


@contextmanager
def serving(config: ServeConfig) -> Iterator[str]:
    """Serve the config's models with Ray Serve; yields the OpenAI base URL, `http://host:port/v1`."""
    plans = plan_models(config)
    refuse_open_exposure(config)
    check_port_free(config.host, config.port)
    root = f"http://{_client_host(config.host)}:{config.port}"
    with _ray_session():
        if serve.status().proxies:
            # A Serve already running keeps its own HTTP port, so ours would never come up.
            raise SoloError("Ray Serve is already running on this Ray cluster: stop it with "
                            "`serve shutdown -y`, or serve from another cluster")
        check_resources(plans, config, ray.available_resources(), ray.cluster_resources())
        try:
            serve.start(http_options={"host": config.host, "port": config.port})
            try:
                serve.run(build_app(config, plans), name=APP_NAME, route_prefix="/")
            except Exception as e:
                last_line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise SoloError(f"the model server failed to start: {last_line}") from None
            wait_until_healthy(root, READY_TIMEOUT_S)
            yield f"{root}/v1"
        finally:
            serve.shutdown()


def serve_forever(config: ServeConfig) -> None:
    """Serve until SIGINT or SIGTERM, then stop everything that was started."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with serving(config) as url:
            plans = plan_models(config)
            served = ", ".join(repr(name) for plan in plans for name in [plan.name, *(a.name for a in plan.adapters)])
            name = plans[0].name
            body = json.dumps({"model": name, "messages": [{"role": "user", "content": "What does json.dumps do?"}]})
            print(f"solo: serving {served} at {url}  (Ctrl-C to stop)\n"
                  f"  chat in a browser: {url.removesuffix('/v1')}/\n"
                  f"  curl {url}/chat/completions -H 'Content-Type: application/json' \\\n"
                  f"    -d '{body}'", flush=True)
            threading.Event().wait()  # until a signal interrupts it
    except KeyboardInterrupt:
        print("solo: stopped", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
