"""Connecting to Ray: the environment every worker gets, and the cluster a job runs on."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import ray
import ray._private.services as services
import torch
import torch.distributed as dist
from ray._raylet import Config

from solo import faults
from solo.config import checkout_root
from solo.errors import SoloError
from solo.store import solo_home, torch_extensions_dir


def cuda_available() -> bool:
    return torch.cuda.is_available()


def worker_env() -> dict[str, str]:
    """Variables every Ray worker needs: the checkout relative config paths start from, where
    compiled DeepSpeed ops are cached (built once per machine, not once per job), the artifact
    store, DeepSpeed's CPU accelerator without a GPU, and the mode Ray Serve runs in."""
    env = {
        "SOLO_CHECKOUT": str(checkout_root()),
        "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir()),
        "SOLO_HOME": str(solo_home()),
        "TOKENIZERS_PARALLELISM": "false",
        # Ray Train's print patch tees every line a worker prints, so the console showed each twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # torch.distributed deprecation notices from inside DeepSpeed, once per call: noise, not news.
        "PYTHONWARNINGS": "ignore::FutureWarning",
        "TRANSFORMERS_VERBOSITY": "error",
        # Ray Serve's documented high-throughput mode: gRPC between the proxy, the gateway and the
        # model's replica, and user code on each replica's own event loop instead of a thread of
        # its own. The serving path then takes less of the CPU that, on a few cores, the engine
        # needs (benchmarks/results/serve_cpu.md). Less two of its parts: direct ingress, which
        # served no faster here and holds the ingress replica for 30 s at every shutdown, and the
        # silencing of replica logs on the console.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
        "RAY_SERVE_LOG_TO_STDERR": "1",
    }
    if not cuda_available():
        env["DS_ACCELERATOR"] = "cpu"
    for name in (faults.ENV, faults.STATE_ENV):  # a test's injected faults reach the workers too
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def path_with_this_environment_first(path: str) -> str:
    """PATH with this Python environment's bin folder first (unchanged if it already is)."""
    bin_dir = str(Path(sys.executable).parent)
    return path if path.split(os.pathsep)[0] == bin_dir else f"{bin_dir}{os.pathsep}{path}"


def use_this_environments_ninja() -> None:
    """Make DeepSpeed's op builds (which run the first `ninja` on PATH) use this environment's ninja,
    the one a `solo up` cluster finds first. Ninja 1.12 changed its build log's format and hash, so a
    system ninja and pip's newer one each take the other's log as stale and rebuild every op: minutes
    of compiling, over and over, wherever processes with the two PATHs share the op cache."""
    os.environ["PATH"] = path_with_this_environment_first(os.environ.get("PATH", ""))


def build_deepspeed_ops(training: bool = True, nvme: bool = True) -> None:
    """Compile DeepSpeed's ops that training loads (`make ops`, before the tests) into the cache every
    job reads, so that no job or test waits minutes on the first build: `training`, CPU Adam (optimizer
    offload) and, on DeepSpeed's CPU accelerator, the shared-memory collectives its process group
    loads; `nvme`, async I/O (NVMe offload), which needs libaio (cluster/system-packages.sh)."""
    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    use_this_environments_ninja()
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops.op_builder import AsyncIOBuilder, CPUAdamBuilder

    if training:
        CPUAdamBuilder().load(verbose=False)
        shared_memory_collectives = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if shared_memory_collectives is not None and shared_memory_collectives.is_compatible(verbose=False):
            shared_memory_collectives.load(verbose=False)
    if nvme and AsyncIOBuilder().is_compatible(verbose=False):
        AsyncIOBuilder().load(verbose=False)
    elif nvme:  # everything but NVMe offload works without it
        print("note: DeepSpeed's async I/O op cannot build here, so NVMe offload will not work: install "
              "libaio-dev (bash cluster/system-packages.sh)", flush=True)
    print(f"DeepSpeed ops ready in {torch_extensions_dir()}", flush=True)


def init_deepspeed_group(cuda: bool, **rendezvous) -> None:
    """torch.distributed as DeepSpeed wants it: NCCL between GPUs, gloo between CPUs. Without
    `rendezvous`, the ranks are those the launcher (Ray Train, `deepspeed`, `torchrun`) put in the
    environment. Ops DeepSpeed builds from here on use this environment's ninja."""
    use_this_environments_ninja()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", **rendezvous)


def join_one_process_group(cuda: bool) -> None:
    """Make this process the only rank of a torch.distributed group, so `solo.train.loop.train_worker`
    runs in it as under a one-process `deepspeed` launch: for benchmarks and tests."""
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it whenever one is built
    init_deepspeed_group(cuda, auto_mpi_discovery=False, init_method=f"tcp://127.0.0.1:{free_port()}",
                         rank=0, world_size=1)


def wait_for_all_ranks() -> None:
    """A barrier across the processes the `deepspeed` launcher started."""
    dist.barrier()


def launched_rank() -> int | None:
    """This process's rank when the `deepspeed` or `torchrun` launcher started it (training without
    Ray), else None. Ray Train sets the same variables, but only inside its workers, never in a driver."""
    if all(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return int(os.environ["RANK"])
    return None


def cluster_file() -> Path:
    """Where `solo up` records the cluster it started, and `solo down` removes it."""
    return solo_home() / "cluster.json"


def cluster_address() -> str | None:
    """The cluster to join: RAY_ADDRESS (set inside a Ray job), else the one `solo up` started."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if cluster_file().is_file():
        return json.loads(cluster_file().read_text())["address"]
    return None


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster this job was submitted to, or the one `solo up` started; else start a
    private local one for the life of this process. Never whatever else happens to run here."""
    env = worker_env()
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = cluster_address()
    runtime_env = {"env_vars": env}
    if address is None:
        start_private_ray(num_cpus, env)
        return
    # Ray 2.60 turns token authentication on for a local head, and a client must say so to join one (a
    # private local Ray turns it on by itself, so there the mode is left alone). Ray read the mode when it
    # was imported: re-read it, as Ray itself does when it turns the mode on.
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    # Inside a submitted job the job's runtime env already holds these same variables; let Ray
    # merge the two rather than refuse the overlap.
    os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    try:
        ray.init(address=address, runtime_env=runtime_env)
    except ConnectionError:
        raise SoloError(f"no Ray cluster answers at {address}: start one with `solo up`, "
                        f"or remove the stale {cluster_file()}") from None


# Ray waits 30 s for a new node's raylet to register (ray/_private/node.py), not a setting; on a machine busy
# with other work that is too short, so a private Ray gets this many tries before solo gives up.
RAY_START_TRIES = 3
RAY_NODE_START_WAIT_S = 30


def start_private_ray(num_cpus: int | None, env: dict[str, str]) -> None:
    """A Ray of this process's own, for its life. Its GCS port is chosen here and given, as RAY_ADDRESS, to
    every process the cluster starts: Ray's own helpers (Ray Train's placement-group cleaner, say) look for
    "the" Ray on this machine otherwise, and with another one running would talk to that one."""
    for attempt in range(1, RAY_START_TRIES + 1):
        address = f"{services.get_node_ip_address()}:{free_port()}"
        pinned = {"RAY_GCS_SERVER_PORT": address.rsplit(":", 1)[1], "RAY_ADDRESS": address}
        saved = {name: os.environ.get(name) for name in pinned}
        os.environ.update(pinned)  # what the GCS, the raylet and through it every worker inherit
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": {**env, "RAY_ADDRESS": address}})
            return
        except Exception as error:  # Ray raises a bare Exception when its node does not come up in time
            if "timed out during startup" not in str(error):
                raise
            ray.shutdown()
            if attempt == RAY_START_TRIES:
                raise SoloError(f"Ray's node did not start on this machine in {RAY_START_TRIES} tries of "
                                f"{RAY_NODE_START_WAIT_S} s: the machine is too busy now. Try again when it is "
                                "quieter, or start Ray once with `solo up` and run jobs on it") from None
            print(f"Ray's node did not start within {RAY_NODE_START_WAIT_S} s (a busy machine?): trying again "
                  f"({attempt + 1} of {RAY_START_TRIES})", file=sys.stderr, flush=True)
        finally:
            for name, value in saved.items():  # this process talks to its Ray through `ray`, not these
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
