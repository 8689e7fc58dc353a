"""Where training checkpoints go and what a run resumes from: Ray Train's storage, or the stage folder
under the `deepspeed` launcher; and, when the worker count changed since the checkpoint was written,
its conversion to DeepSpeed's universal checkpoint, done once on the driver before any worker starts.

Every save lists its files with their sizes beside them (`solo-files.*.json`, written last, one per
writer). A run resumes from the newest checkpoint whose files are all there at their size: a
checkpoint cut short by a power cut or a full disk, or a `latest` that names a step that is not
there, costs one checkpoint interval and a warning, never the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch.distributed as dist

from solo.errors import SoloError
from solo.faults import fault_point
from solo.train.config import TrainConfig
from solo.train.stream import is_stream_checkpoint


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run resumes from: `tag` in `folder` (which holds DeepSpeed's `latest`, and may hold
    newer tags), and the newer checkpoints passed over because they were damaged, each with why."""

    folder: Path
    tag: str
    skipped: tuple[str, ...] = ()


LISTING = "solo-files"  # <tag>/solo-files.<writer>.json: {"writers": N, "files": {name: size}}


def list_files(tag_dir: Path, writer: str, writers: int) -> None:
    """Record the files now in `tag_dir` and their sizes: called by each of `writers` writers once its own
    part of a checkpoint is on disk, last."""
    files = {str(f.relative_to(tag_dir)): f.stat().st_size for f in sorted(tag_dir.rglob("*"))
             if f.is_file() and not f.name.startswith(LISTING)}
    listing = tag_dir / f"{LISTING}.{writer}.json"
    partial = listing.with_suffix(".tmp")
    partial.write_text(json.dumps({"writers": writers, "files": files}))
    os.replace(partial, listing)


def checkpoint_problem(folder: Path, tag: str) -> str:
    """Why the checkpoint `tag` in `folder` cannot be resumed from, or "" when every file its writers listed
    is there at its size. One saved before checkpoints were listed is taken as it is."""
    tag_dir = folder / tag
    if not tag_dir.is_dir():
        return f"{tag} is not there"
    listings = sorted(tag_dir.glob(f"{LISTING}.*.json"))
    if not listings:
        return ""
    try:
        parsed = [json.loads(listing.read_text()) for listing in listings]
    except (OSError, ValueError):
        return f"{tag}: a list of its files is damaged"
    if len(parsed) < parsed[0]["writers"]:
        return f"{tag}: {parsed[0]['writers'] - len(parsed)} of its {parsed[0]['writers']} writers never finished"
    for files in (listing["files"] for listing in parsed):
        for name, size in files.items():
            found = (tag_dir / name).stat().st_size if (tag_dir / name).is_file() else None
            if found != size:
                return f"{tag}: {name} is " + ("missing" if found is None else f"{found:,} bytes of {size:,}")
    return ""


def pick(candidates: list[tuple[Path, str]]) -> Resume | None:
    """The first of `candidates` (newest first) that is whole; the damaged ones before it are its `skipped`."""
    skipped = []
    for folder, tag in candidates:
        problem = checkpoint_problem(folder, tag)
        if not problem:
            return Resume(folder, tag, tuple(skipped))
        skipped.append(problem)
    if skipped:
        print(f"no whole checkpoint to resume from ({'; '.join(skipped)}): starting over", flush=True)
    return None


def _tags(folder: Path) -> list[str]:
    """The checkpoint tags in `folder`, newest first: the one `latest` names, then the others by step."""
    named = (folder / "latest").read_text().strip() if (folder / "latest").is_file() else None
    others = sorted((p.name for p in folder.glob("step_*") if p.is_dir() and p.name != named), reverse=True)
    return ([named] if named else []) + others


def resume_from(folder: Path) -> Resume | None:
    """The newest whole checkpoint in one checkpoint folder (DeepSpeed's layout: `latest` and tag folders)."""
    return pick([(folder, tag) for tag in _tags(folder)])


class CheckpointSink:
    """Where checkpoints go (Ray Train's storage, under Ray). This base keeps none, and resumes from
    none: a run measured for its speed or memory alone."""

    def latest(self) -> Resume | None: ...
    def save(self, engine, step: int, client_state: dict, metrics: dict, exclude_frozen: bool = False) -> None: ...
    def report(self, metrics: dict) -> None: ...


class RaySink(CheckpointSink):
    """Ray Train's storage: each report's checkpoint in `<storage>/checkpoint_<time>/`, every rank's shard and
    file list uploaded into it."""

    def __init__(self, storage: Path):
        self.storage = storage  # the run's folder in Ray Train's storage (RunConfig's storage_path / name)
        self._restored = None

    def latest(self):
        """The newest whole checkpoint in the run's storage: Ray Train's newest registered one, or a newer one
        every rank finished uploading before the controller registered it (it lags the workers), or, where
        those are damaged, an older one Ray still keeps."""
        registered = ray.train.get_checkpoint()
        folders = sorted((p for p in self.storage.glob("checkpoint_*") if p.is_dir()), reverse=True)
        if registered is not None and Path(registered.path) not in folders:
            folders.insert(0, Path(registered.path))  # storage elsewhere than this folder
        resume = pick([(folder, tag) for folder in folders for tag in _tags(folder)[:1]])
        if resume is None:
            return None
        self._restored = tempfile.mkdtemp(prefix="solo-restore-")
        local = Path(ray.train.Checkpoint.from_directory(str(resume.folder)).to_directory(self._restored))
        return Resume(local, resume.tag, resume.skipped)

    def save(self, engine, step, client_state, metrics, exclude_frozen=False):
        tag = f"step_{step:08d}"
        with tempfile.TemporaryDirectory(prefix="solo-ckpt-") as folder:
            engine.save_checkpoint(folder, tag=tag, client_state=client_state,
                                   exclude_frozen_parameters=exclude_frozen)
            # Every rank uploads its own ZeRO shard into the same checkpoint, with the list of them.
            list_files(Path(folder) / tag, f"rank{dist.get_rank()}", dist.get_world_size())
            fault_point("train.checkpoint.written")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def report(self, metrics):
        ray.train.report(metrics)


class FolderSink(CheckpointSink):
    """Checkpoints in the stage folder, for runs without Ray (the `deepspeed` or `torchrun` launcher):
    `checkpoints/step_XXXXXXXX/` per save, the last `keep` kept, and `checkpoints/latest` naming the
    newest. DeepSpeed's own `latest` is written by rank 0 without waiting for the other ranks' shards,
    so here it is written only after a barrier: a crash mid-save leaves `latest` on the previous one."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep

    def latest(self):
        return resume_from(self.folder) if self.folder.is_dir() else None

    def save(self, engine, step, client_state, metrics, exclude_frozen=False):
        tag = f"step_{step:08d}"
        engine.save_checkpoint(str(self.folder), tag=tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=exclude_frozen)
        dist.barrier()
        if dist.get_rank() == 0:
            list_files(self.folder / tag, "all", 1)
            fault_point("train.checkpoint.written")
            pointer = self.folder / ".latest.tmp"
            pointer.write_text(tag)
            os.replace(pointer, self.folder / "latest")
            for old in sorted(self.folder.glob("step_*"))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            # A universal form made to resume on this worker count (see convert_for_worker_count) is
            # stale once a checkpoint of this count exists, and as large as the model's whole state.
            shutil.rmtree(self.folder / UNIVERSAL, ignore_errors=True)

    def report(self, metrics):
        pass


def checkpoint_workers(resume: Resume) -> int | None:
    """How many workers wrote the ZeRO checkpoint (one optimizer shard each); None where it holds no ZeRO
    shards (ZeRO-0, adapters)."""
    shards = list((resume.folder / resume.tag).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    return len(shards) or None


def newest_checkpoint(output_dir: Path) -> Resume | None:
    """The checkpoint a run in this stage folder would resume from: the folder sink's (`checkpoints/`,
    the deepspeed launcher), else Ray Train's newest whole one (`ray/train/checkpoint_<time>`, names in
    time order)."""
    if (output_dir / "checkpoints").is_dir():
        return resume_from(output_dir / "checkpoints")
    under_ray = sorted((p for p in (output_dir / "ray" / "train").glob("checkpoint_*") if p.is_dir()), reverse=True)
    return pick([(folder, tag) for folder in under_ray for tag in _tags(folder)[:1]])


UNIVERSAL = "universal"  # beside a ZeRO checkpoint's tags: its universal form, for another worker count


def convert_for_worker_count(output_dir: Path, config: TrainConfig) -> None:
    """Before training starts, when the checkpoint it will resume from was written by another number of
    workers: convert it once into DeepSpeed's universal checkpoint (`<folder>/universal/`), which holds
    each parameter's weights and Adam moments whole, so that any worker count can load its own
    partitions of them. DeepSpeed loads its native per-rank ZeRO shards only onto as many ranks as
    wrote them. The data loader's position counts rows of the whole run, so it resumes on any count."""
    resume = newest_checkpoint(output_dir)
    saved = checkpoint_workers(resume) if resume is not None and config.engine != "stream" else None
    if saved is None or saved == config.workers:
        return
    folder, tag = resume.folder, resume.tag
    target = folder / UNIVERSAL
    if (target / "latest_universal").is_file() and (target / "latest_universal").read_text().strip() == tag:
        return
    shutil.rmtree(target, ignore_errors=True)
    print(f"the checkpoint {tag} was written by {saved} workers and this run has {config.workers}: converting it "
          f"to DeepSpeed's universal checkpoint", flush=True)
    done = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(folder / tag), "--output_folder", str(target / tag), "--num_extract_workers", "1",
                           "--num_merge_workers", "1"], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise SoloError(f"could not convert the {saved}-worker checkpoint {folder / tag} to resume on "
                        f"{config.workers} workers (DeepSpeed's ds_to_universal: {done.stderr.strip()[-500:]}); "
                        f"resume with --set workers={saved}")


def resumes_universal(resume: Resume, workers: int) -> bool:
    """Whether the checkpoint loads through its universal form (another worker count wrote it)."""
    saved = checkpoint_workers(resume)
    if saved is None or saved == workers:
        return False
    folder = resume.folder
    universal = folder / UNIVERSAL / "latest_universal"
    if not universal.is_file() or universal.read_text().strip() != resume.tag:
        raise SoloError(f"the checkpoint in {folder} was written by {saved} workers and has no universal form "
                        f"to resume on {workers}: resume with --set workers={saved}")
    return True


def check_resumable(resume: Resume, engine: str) -> None:
    """DeepSpeed cannot resume a stream checkpoint (its Adam state is not in ZeRO's shards); the stream
    engine resumes both kinds."""
    if engine == "stream":
        return  # it reads any engine's checkpoint written on any worker count (solo.train.stream)
    if is_stream_checkpoint(resume.folder / resume.tag):
        raise SoloError(f"the checkpoint in {resume.folder} was written by engine: stream, which DeepSpeed cannot "
                        "resume; resume with --set engine=stream, or start the stage afresh")
