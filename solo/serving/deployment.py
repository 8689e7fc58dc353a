"""What `solo serve` deploys, decided on the driver before Ray Serve starts: each model's folder
and API name, its engine, the adapters of the artifact store trained on it, and the Ray Serve
options of its `LLMServer` deployment. Plain data, so it is checked (and unit-tested) without Ray.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from solo.errors import SoloError
from solo.serving.config import ServeConfig, ServedModelConfig
from solo.serving.engine import Engine
from solo.serving.engine_process import EngineProcess
from solo.serving.vllm_engine import VllmEngine, vllm_device
from solo.store import ADAPTER_MANIFEST, AdapterManifest, adapters_dir

log = logging.getLogger(__name__)

ResolvedEngine = Literal["cpu", "vllm"]

# The share of a GPU's memory vLLM may take (its own default), split between replicas packed onto one.
GPU_MEMORY_SHARE = 0.9
# On vLLM's CPU build that share is of the machine's RAM, which the OS, Ray's object store, the
# gateway and any other job also live in: a quarter, unless VLLM_CPU_KVCACHE_SPACE (GiB) says.
CPU_MEMORY_SHARE = 0.25


def pick_engine(requested: str) -> ResolvedEngine:
    """`auto`: vLLM where it can run on a CUDA GPU, else the CPU engine (which outruns vLLM's CPU
    build on a machine without AVX-512: README). Decided on the machine that runs `solo serve`: on
    a cluster whose GPUs are elsewhere, ask for vllm."""
    if requested != "auto":
        return requested  # type: ignore[return-value]

    return "vllm" if vllm_device() == "cuda" else "cpu"


def model_folder(path: str) -> Path:
    """An exported model to serve, or a `SoloError` saying what is wrong with it."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise SoloError(f"model folder {path} does not exist")
    lacking = [what for what, patterns in (
        ("config.json", ["config.json"]),
        ("weights (*.safetensors)", ["*.safetensors", "*.bin"]),
        ("tokenizer", ["tokenizer.json", "tokenizer_config.json"]),
    ) if not any(any(folder.glob(pattern)) for pattern in patterns)]
    if lacking:
        raise SoloError(f"{path} is not a Hugging Face model folder: it has no {', no '.join(lacking)}")
    return folder


@dataclass(frozen=True)
class AdapterPlan:
    name: str  # its API model name, as registered in the artifact store
    folder: str
    rank: int


@dataclass(frozen=True)
class ModelPlan:
    name: str
    folder: str
    engine: ResolvedEngine
    settings: ServedModelConfig
    adapters: tuple[AdapterPlan, ...] = field(default=())

    def deployment_name(self, index: int) -> str:
        # An id in Serve's dashboard and logs: the model's name, kept readable.
        return f"LLMServer-{index}-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}"


def adapters_of(folder: Path, taken: set[str]) -> list[AdapterPlan]:
    """The adapters registered in the artifact store whose base is `folder`. One that cannot be
    read, or whose name is already a model's, is skipped with the reason logged."""
    found = []
    for manifest_file in sorted(adapters_dir().glob(f"*/{ADAPTER_MANIFEST}")):
        try:
            manifest = AdapterManifest.model_validate_json(manifest_file.read_text())
            rank = int(json.loads((manifest_file.parent / "adapter_config.json").read_text())["r"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("adapter %s skipped: unreadable (%s)", manifest_file.parent.name, str(error).splitlines()[0])
            continue
        if Path(manifest.base_model).expanduser().resolve() != folder:
            continue
        if manifest.name in taken:
            log.warning("adapter %s skipped: a model or adapter of that name is served already", manifest.name)
            continue
        found.append(AdapterPlan(manifest.name, str(manifest_file.parent), rank))
    return found


def plan_models(config: ServeConfig) -> list[ModelPlan]:
    """Every model to deploy, checked: a folder that is not a model, or two models of one name,
    is a `SoloError` here, before Ray starts."""
    models = config.served_models()
    if not models:
        raise SoloError("which model? pass --model PATH (an exported Hugging Face folder) or set models: in a config")
    resolved = [(m, model_folder(m.path)) for m in models]
    names = [m.name or folder.name for m, folder in resolved]
    for name in names:
        if names.count(name) > 1:
            raise SoloError(f"two models would be served as {name!r}: give them names (name: in models:)")
    plans = []
    for (settings, folder), name in zip(resolved, names):
        engine = pick_engine(settings.engine or config.engine)
        adapters = tuple(adapters_of(folder, set(names) | {a.name for p in plans for a in p.adapters}))
        plans.append(ModelPlan(name, str(folder), engine, settings, adapters))
    return plans


def deployment_options(plan: ModelPlan, config: ServeConfig) -> dict[str, Any]:
    """Ray Serve options of a model's `LLMServer` deployment: its replicas (fixed or autoscaled),
    and what each replica takes: a share of a GPU for vLLM on GPUs, cores for an engine on CPUs."""
    settings = plan.settings
    if plan.engine == "vllm" and settings.num_gpus:
        # A fraction of a GPU lets Serve pack replicas onto one; whole GPUs let it place each
        # replica on a node that has them free, so replicas spread over a cluster's GPUs.
        actor = {"num_cpus": 1, "num_gpus": settings.num_gpus}
    else:
        # An engine on CPUs (ours, or vLLM's CPU build). Ray starts its workers at niceness 15,
        # below its own daemons and any client on the machine; this engine is the machine's
        # serving path, so it runs at the default.
        actor = {"num_cpus": config.replica_cpus, "runtime_env": {"env_vars": {"RAY_worker_niceness": "0"}}}
    options: dict[str, Any] = {
        # The engine batches and queues what it is given; the gateway's max_queue bounds the
        # total, so Serve itself need not queue.
        "max_ongoing_requests": config.max_queue,
        "ray_actor_options": actor,
    }
    if settings.autoscaling is None:
        options["num_replicas"] = settings.replicas
    else:
        scaling = settings.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "initial_replicas": max(1, scaling.min_replicas),  # one up front, so the server answers
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        }
    return options


def build_engine(plan: ModelPlan, max_concurrent: int) -> Engine:
    """The plan's engine, on the replica that will run it (torch, or vLLM, load here)."""
    if plan.engine == "vllm":
        settings = plan.settings
        # Replicas packed onto one GPU must leave each other room: each takes its share.
        memory = GPU_MEMORY_SHARE * min(1.0, settings.num_gpus) if settings.num_gpus else CPU_MEMORY_SHARE
        return VllmEngine(plan.folder, tensor_parallel_size=settings.tensor_parallel_size(),
                          gpu_memory_utilization=memory,
                          adapter_ranks=[a.rank for a in plan.adapters] if plan.adapters else None,
                          max_loras=settings.max_adapters_per_replica)

    return EngineProcess(plan.folder, max_concurrent)


def replica_cpus_needed(plans: list[ModelPlan], config: ServeConfig) -> float:
    """The CPUs the replicas that start at once ask Ray for."""
    total = 0.0
    for plan in plans:
        options = deployment_options(plan, config)
        replicas = options.get("num_replicas") or options["autoscaling_config"]["initial_replicas"]
        total += replicas * options["ray_actor_options"]["num_cpus"]
    return total
