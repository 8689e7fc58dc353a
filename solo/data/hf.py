"""Inputs in Hugging Face's own formats, for the data stage and finetune's conversations alike:

    a folder written by `Dataset.save_to_disk`        its `.arrow` shards, in order (`state.json` names them)
    a folder written by `DatasetDict.save_to_disk`    one split's shards: `split`, or the only split there is
    a `datasets` cache folder (`dataset_info.json`    one split's shards, by their names `<builder>-<split>
      beside `<builder>-<split>*.arrow` files)          [-NNNNN-of-NNNNN].arrow`: `split`, or the only one
    an `.arrow` file                                  Arrow's streaming format, as `datasets` writes it (the
                                                        random-access file format is read too)
    hf://datasets/OWNER/NAME[@REVISION][/PATH]        downloaded once into the Hugging Face cache, then read
                                                        as the local file or folder it is

Arrow files are read a record batch at a time (memory-mapped), never whole. Nothing here decides what a
record is: the readers in solo.data.files and solo.data.records do.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import datasets.config
import pyarrow as pa
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from solo.errors import SoloError

HUB_PREFIX = "hf://"
HUB_TIMEOUT_S = 5.0  # the Hub's client waits forever by default: an offline machine must fail at once
# The files `save_to_disk` and the `datasets` cache write beside the arrow shards: the dataset's description,
# never its records.
DATASET_STATE = datasets.config.DATASET_STATE_JSON_FILENAME            # state.json: a Dataset's shards
DATASET_DICT = datasets.config.DATASETDICT_JSON_FILENAME               # dataset_dict.json: its splits
DATASET_INFO = datasets.config.DATASET_INFO_FILENAME                   # dataset_info.json
METADATA_FILES = frozenset({DATASET_STATE, DATASET_DICT, DATASET_INFO})
_ARROW_FILE_MAGIC = b"ARROW1"  # the random-access format; the streaming format has no magic


# ---------------------------------------------------------------- hf:// paths


def is_hub_path(path: str) -> bool:
    return path.startswith(HUB_PREFIX)


def local_path(path: str) -> Path:
    """The file or folder a path names on this machine: an hf:// path is downloaded first (once)."""
    return hub_snapshot(path) if is_hub_path(path) else Path(path).expanduser()


def parse_hub_path(path: str) -> tuple[str, str | None, str]:
    """(repo id, revision or None, path inside the repo or "") of `hf://datasets/OWNER/NAME[@REV][/PATH]`; a
    revision with slashes in it is URL-encoded, as fsspec's HfFileSystem has it (`@refs%2Fconvert%2Fparquet`)."""
    match = re.fullmatch(r"hf://datasets/([^/@]+/[^/@]+)(?:@([^/]+))?(?:/(.*))?", path)
    if match is None:
        raise SoloError(f"input {path}: an hf:// input is hf://datasets/OWNER/NAME[@REVISION][/PATH]")
    revision = urllib.parse.unquote(match.group(2)) if match.group(2) else None
    return match.group(1), revision, (match.group(3) or "").strip("/")


@functools.cache  # one look at the Hub per path and process: the driver resolves an input's files several times
def hub_snapshot(path: str) -> Path:
    """The local copy of an hf:// path, downloaded into the Hugging Face cache (HF_HOME) unless it is there.
    Offline (HF_HUB_OFFLINE=1) only the cache is read; with no network the error comes in seconds."""
    repo_id, revision, inner = parse_hub_path(path)
    offline = hub_constants.HF_HUB_OFFLINE
    if not offline:
        unreachable = _unreachable(hub_constants.ENDPOINT)
        if unreachable:
            raise SoloError(f"input {path}: cannot reach {hub_constants.ENDPOINT} ({unreachable}): an hf:// input "
                            "needs the network; download it where there is one and pass the folder")
    try:
        root = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=offline,
                                      allow_patterns=[inner, f"{inner}/*"] if inner else None,
                                      etag_timeout=HUB_TIMEOUT_S))
    except LocalEntryNotFoundError as error:
        if offline:
            raise SoloError(f"input {path}: not in the Hugging Face cache, and HF_HUB_OFFLINE is set: unset it to "
                            "download it, or pass a local folder") from None
        raise SoloError(f"input {path}: {str(error).strip().splitlines()[0]}") from None
    except OSError as error:  # HfHubHTTPError among them: no such repository, revision or access
        raise SoloError(f"input {path}: {str(error).strip().splitlines()[0]}") from None
    local = root / inner
    if not local.exists():
        raise SoloError(f"input {path}: the dataset {repo_id} has no {inner!r}")
    return local


def _unreachable(url: str) -> str | None:
    """Why `url` cannot be reached within HUB_TIMEOUT_S, or None when it answers (any HTTP status). Probed in a
    thread so that a name lookup that never returns cannot hold the caller past the deadline either."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered
        except (urllib.error.URLError, OSError) as error:
            outcome.append(str(getattr(error, "reason", error)))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(2 * HUB_TIMEOUT_S)
    return outcome[0] if outcome else f"no answer in {2 * HUB_TIMEOUT_S:g} s"


# ---------------------------------------------------------------- datasets folders


def dataset_files(folder: Path, split: str | None, what: str) -> list[Path] | None:
    """The arrow shards of a folder `save_to_disk` or the `datasets` cache wrote (of `split`, or of its only
    split), in order; None when the folder is neither. `what` names the input in errors."""
    if (folder / DATASET_DICT).is_file():
        splits = _read_json(folder / DATASET_DICT, what).get("splits") or []
        chosen = _choose_split(splits, split, what, "DatasetDict")
        return _saved_shards(folder / chosen, f"{what} (split {chosen})")
    if (folder / DATASET_STATE).is_file():
        if split is not None:
            raise SoloError(f"{what} is a Dataset, not a DatasetDict: it has no splits; leave split out")
        return _saved_shards(folder, what)
    if (folder / DATASET_INFO).is_file() and any(folder.glob("*.arrow")):
        return _cache_shards(folder, split, what)
    return None


def _saved_shards(folder: Path, what: str) -> list[Path]:
    if not (folder / DATASET_STATE).is_file():
        raise SoloError(f"{what}: {folder} is not a folder written by Dataset.save_to_disk (no {DATASET_STATE})")
    names = [entry.get("filename") for entry in _read_json(folder / DATASET_STATE, what).get("_data_files") or []]
    shards = [folder / name for name in names if isinstance(name, str)]
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing or not shards:
        raise SoloError(f"{what}: {folder / DATASET_STATE} names shards that are not there: "
                        f"{', '.join(missing) or 'none at all'}")
    return shards


def _cache_shards(folder: Path, split: str | None, what: str) -> list[Path]:
    """A `datasets` cache folder holds every split side by side, `<builder>-<split>[-NNNNN-of-NNNNN].arrow`."""
    by_split: dict[str, list[Path]] = {}
    for shard in sorted(folder.glob("*.arrow")):
        match = re.fullmatch(r".+?-([^-]+)(?:-\d{5}-of-\d{5})?\.arrow", shard.name)
        by_split.setdefault(match.group(1) if match else "", []).append(shard)
    if "" in by_split:  # names not in the cache's pattern: the folder is one set of shards
        if split is not None:
            raise SoloError(f"{what}: its arrow files are not named by split (<builder>-<split>.arrow); "
                            "leave split out to read them all")
        return sorted(folder.glob("*.arrow"))
    return by_split[_choose_split(sorted(by_split), split, what, "datasets cache folder")]


def _choose_split(splits: list[str], split: str | None, what: str, kind: str) -> str:
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise SoloError(f"{what} is a {kind} with the splits {', '.join(splits) or '(none)'}: set split to one")
    if split not in splits:
        raise SoloError(f"{what} has no split {split!r}; its splits: {', '.join(splits) or '(none)'}")
    return split


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SoloError(f"{what}: {path} is damaged ({error}); save the dataset again") from None
    if not isinstance(value, dict):
        raise SoloError(f"{what}: {path} is not a JSON object; save the dataset again")
    return value


# ---------------------------------------------------------------- arrow files


def _open_arrow(path: Path):
    source = pa.memory_map(str(path))
    if source.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC:
        source.seek(0)
        return pa.ipc.open_file(source)
    source.seek(0)
    return pa.ipc.open_stream(source)


def arrow_schema(path: Path) -> pa.Schema:
    """The schema of an arrow file (its first bytes); pa.ArrowException or OSError when it is not one."""
    return _open_arrow(path).schema


def arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of an arrow file, one at a time; a damaged file raises (pa.ArrowException, OSError)
    once the batches before the damage are given."""
    reader = _open_arrow(path)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
        return
    yield from reader
