"""The artifact store: the one place solo reads and writes paths.

    $SOLO_HOME/                       default ~/.solo
      runs/<run>/<stage>/             a finished stage's outputs and its manifest.json
      runs/<run>/<stage>.partial/     a stage at work; kept after a crash so it can resume
      adapters/<name>/                LoRA/QLoRA adapters in peft's format, with adapter.json (base, method, metrics)

DeepSpeed's compiled CPU ops belong to the machine, not to a store: they are cached once in
$TORCH_EXTENSIONS_DIR, default ~/.cache/solo/torch_extensions, whatever SOLO_HOME says.

A stage writes into `<stage>.partial/` and is renamed to `<stage>/` only when whole, with
its manifest written last, so a crash never leaves an output that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from solo.errors import SoloError

MANIFEST = "manifest.json"


def solo_home() -> Path:
    return Path(os.environ.get("SOLO_HOME", "~/.solo")).expanduser().resolve()


def torch_extensions_dir() -> Path:
    """Where DeepSpeed's compiled ops are cached: one folder per Python environment, since an op is
    built against that environment's torch and ninja rebuilds it when the paths change, so two
    checkouts (or CI's fresh virtualenv beside yours) would otherwise keep rebuilding each other's."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
    return cache / "solo" / "torch_extensions" / f"py{sys.version_info.major}{sys.version_info.minor}-{environment}"


class Restart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: float
    resumed_from_step: int
    reason: str


class Manifest(BaseModel):
    """What a stage did: enough to decide whether it must run again, and to report on it."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    status: Literal["running", "complete", "failed"]
    config_hash: str
    inputs: dict[str, str] = Field(default_factory=dict, description="input name → its fingerprint or path")
    outputs: list[str] = Field(default_factory=list)
    metrics: dict[str, float | int | str] = Field(default_factory=dict)
    started_at: float
    finished_at: float | None = None
    duration_s: float | None = None
    restarts: list[Restart] = Field(default_factory=list)
    error: str | None = None
    failure: Literal["mistake", "crash", "interrupted"] | None = Field(
        default=None, description="why a failed stage stopped: a mistake to fix (SoloError: retrying cannot "
                                  "help), a crash (anything else), or an interruption (Ctrl-C)")

    def key(self) -> str:
        """What a downstream stage records of this one: changes whenever this stage or its inputs do."""
        return hashlib.sha256(f"{self.config_hash}:{sorted(self.inputs.items())}".encode()).hexdigest()[:16]


def write_json_atomic(path: Path, payload: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(folder: Path) -> Manifest | None:
    file = folder / MANIFEST
    if not file.is_file():
        return None
    try:
        return Manifest.model_validate_json(file.read_text())
    except ValueError:
        return None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json_atomic(folder / MANIFEST, manifest.model_dump(mode="json"))


class RunStore:
    """One run's folder: a subfolder per stage."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def named(cls, run: str) -> RunStore:
        return cls(solo_home() / "runs" / run)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage


def exported_model_dir(run: RunStore, run_name: str) -> Path:
    """The Hugging Face folder the export stage writes: what `solo serve --model RUN` serves."""
    return run.stage_dir("export") / run_name


ADAPTER_MANIFEST = "adapter.json"


class AdapterManifest(BaseModel):
    """What an adapter is for: the base it was trained on, how, and how it did."""

    model_config = ConfigDict(extra="forbid")
    name: str
    base_model: str
    method: str
    created_at: float
    metrics: dict[str, float | int | str] = Field(default_factory=dict)


def adapters_dir() -> Path:
    return solo_home() / "adapters"


def replace_folder(staged: Path, final: Path) -> None:
    """Put a whole staged folder at `final`; an older one there is moved aside first, then removed,
    so `final` is never half old, half new."""
    if final.exists():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}-{time.time_ns()}")
        os.replace(final, stale)
        os.replace(staged, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(staged, final)


def register_adapter(name: str, source: Path, base_model: str, method: str, metrics: dict) -> Path:
    """Copy a peft adapter folder into the store under `name` (replacing an older one of that name), whole or
    not at all."""
    final = adapters_dir() / name
    staging = final.with_name(f".{name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    manifest = AdapterManifest(name=name, base_model=base_model, method=method, created_at=time.time(),
                               metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
    write_json_atomic(staging / ADAPTER_MANIFEST, manifest.model_dump(mode="json"))
    replace_folder(staging, final)
    return final


def find_adapter(name: str) -> tuple[Path, AdapterManifest]:
    """A registered adapter's folder (load it with `peft.PeftModel.from_pretrained`) and its manifest."""
    folder = adapters_dir() / name
    if not (folder / ADAPTER_MANIFEST).is_file():
        known = sorted(p.name for p in adapters_dir().glob("*") if (p / ADAPTER_MANIFEST).is_file())
        raise SoloError(f"no adapter named {name!r} in {adapters_dir()} (registered: {', '.join(known) or 'none'})")
    return folder, AdapterManifest.model_validate_json((folder / ADAPTER_MANIFEST).read_text())


def partial_folder(final: Path) -> Path:
    """Where a stage writes until it is whole."""
    return final.with_name(final.name + ".partial")


@contextmanager
def staged_output(final: Path, manifest: Manifest) -> Iterator[Path]:
    """Yield a `.partial` folder to write into; on success, publish it under `final`.

    A `.partial` left by an interrupted attempt with the same config is reused (that is how
    training resumes from its checkpoints); one from another config is cleared first.
    """
    partial = partial_folder(final)
    previous = read_manifest(partial)
    if partial.exists() and (previous is None or previous.config_hash != manifest.config_hash
                             or previous.inputs != manifest.inputs):
        shutil.rmtree(partial)
    if previous is not None and partial.exists():
        manifest.restarts = previous.restarts
    partial.mkdir(parents=True, exist_ok=True)
    write_manifest(partial, manifest)
    try:
        yield partial
    except BaseException as exc:
        manifest.status = "failed"
        manifest.error = f"{type(exc).__name__}: {exc}"[:2000]
        manifest.failure = ("mistake" if isinstance(exc, SoloError) else
                            "interrupted" if isinstance(exc, KeyboardInterrupt) else "crash")
        manifest.finished_at = time.time()
        write_manifest(partial, manifest)
        raise
    # Pick up what the stage itself recorded while it ran (restarts, for example).
    latest = read_manifest(partial)
    if latest is not None:
        manifest.restarts = latest.restarts
    manifest.status = "complete"
    manifest.finished_at = time.time()
    manifest.duration_s = round(manifest.finished_at - manifest.started_at, 3)
    manifest.outputs = sorted(str(p.relative_to(partial)) for p in partial.iterdir() if p.name != MANIFEST)
    write_manifest(partial, manifest)
    replace_folder(partial, final)
