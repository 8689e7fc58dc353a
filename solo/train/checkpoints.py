"""Where training checkpoints go and what a run resumes from: Ray Train's storage, or the stage folder
under the `deepspeed` launcher; and, when the worker count changed since the checkpoint was written,
its conversion to DeepSpeed's universal checkpoint, done once on the driver before any worker starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import ray.train
import torch.distributed as dist

from solo.errors import SoloError
from solo.train.config import TrainConfig
from solo.train.stream import is_stream_checkpoint


class CheckpointSink:
    """Where checkpoints go (Ray Train's storage, under Ray). This base keeps none, and resumes from
    none: a run measured for its speed or memory alone."""

    def latest(self) -> Path | None: ...
    def save(self, engine, step: int, client_state: dict, metrics: dict, exclude_frozen: bool = False) -> None: ...
    def report(self, metrics: dict) -> None: ...


class RaySink(CheckpointSink):
    def __init__(self):
        self._restored = None

    def latest(self):
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored = tempfile.mkdtemp(prefix="solo-restore-")
        return Path(checkpoint.to_directory(self._restored))

    def save(self, engine, step, client_state, metrics, exclude_frozen=False):
        with tempfile.TemporaryDirectory(prefix="solo-ckpt-") as folder:
            engine.save_checkpoint(folder, tag=f"step_{step:08d}", client_state=client_state,
                                   exclude_frozen_parameters=exclude_frozen)
            # Every rank uploads its own ZeRO shard into the same checkpoint.
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
        return self.folder if (self.folder / "latest").is_file() else None

    def save(self, engine, step, client_state, metrics, exclude_frozen=False):
        tag = f"step_{step:08d}"
        engine.save_checkpoint(str(self.folder), tag=tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=exclude_frozen)
        dist.barrier()
        if dist.get_rank() == 0:
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


def checkpoint_workers(folder: Path) -> int | None:
    """How many workers wrote the ZeRO checkpoint `folder` names in its `latest` file (one optimizer
    shard each); None where it holds no ZeRO shards (ZeRO-0, adapters)."""
    latest = folder / "latest"
    if not latest.exists():
        return None
    shards = list((folder / latest.read_text().strip()).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    return len(shards) or None


def newest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint a run in this stage folder would resume from: the folder sink's (`checkpoints/`,
    the deepspeed launcher), else Ray Train's newest (`ray/train/checkpoint_<time>`, names in time order)."""
    if (output_dir / "checkpoints" / "latest").is_file():
        return output_dir / "checkpoints"
    under_ray = sorted(p for p in (output_dir / "ray" / "train").glob("checkpoint_*") if (p / "latest").is_file())
    return under_ray[-1] if under_ray else None


UNIVERSAL = "universal"  # beside a ZeRO checkpoint's tags: its universal form, for another worker count


def convert_for_worker_count(output_dir: Path, config: TrainConfig) -> None:
    """Before training starts, when the checkpoint it will resume from was written by another number of
    workers: convert it once into DeepSpeed's universal checkpoint (`<folder>/universal/`), which holds
    each parameter's weights and Adam moments whole, so that any worker count can load its own
    partitions of them. DeepSpeed loads its native per-rank ZeRO shards only onto as many ranks as
    wrote them. The data loader's position counts rows of the whole run, so it resumes on any count."""
    folder = newest_checkpoint(output_dir)
    saved = checkpoint_workers(folder) if folder is not None and config.engine != "stream" else None
    if saved is None or saved == config.workers:
        return
    tag = (folder / "latest").read_text().strip()
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


def resumes_universal(folder: Path, workers: int) -> bool:
    """Whether the checkpoint in `folder` loads through its universal form (another worker count wrote it)."""
    saved = checkpoint_workers(folder)
    if saved is None or saved == workers:
        return False
    if not (folder / UNIVERSAL / "latest_universal").is_file():
        raise SoloError(f"the checkpoint in {folder} was written by {saved} workers and has no universal form "
                        f"to resume on {workers}: resume with --set workers={saved}")
    return True


def check_resumable(folder: Path, engine: str) -> None:
    """DeepSpeed cannot resume a stream checkpoint (its Adam state is not in ZeRO's shards); the stream
    engine resumes both kinds."""
    if engine == "stream":
        return  # it reads any engine's checkpoint written on any worker count (solo.train.stream)
    if is_stream_checkpoint(folder):
        raise SoloError(f"the checkpoint in {folder} was written by engine: stream, which DeepSpeed cannot resume; "
                        f"resume with --set engine=stream, or start the stage afresh")
