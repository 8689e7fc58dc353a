"""Whole records, as dicts, from any file solo reads, for a reader that wants records rather than text
documents (finetune's conversations): jsonl, plain, gzipped or zstd-compressed (decompressed as a stream, a
line at a time); one JSON list (read whole, as JSON must be); parquet and arrow (a record batch at a time); a
folder of them; a Hugging Face dataset folder (one split) or an hf:// path (solo.data.hf).

A line that is not JSON is one record that failed, given as `NotJSON`, for the caller to count. A file that
cannot be read to its end (a truncated `.zst`, a parquet file whose footer is gone) stops the read with one
line naming it: a training set read in part would train on whatever happened to come first.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from solo.data.files import format_of, is_dataset_metadata
from solo.data.hf import arrow_batches, dataset_files, local_path
from solo.errors import SoloError

RECORD_FORMATS = ("jsonl", "json", "parquet", "arrow")
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_SNIFFED_CHARS = 4096  # of a file named neither .jsonl nor .json: whether it opens a JSON list
_BATCH_ROWS = 1024     # parquet rows decoded at a time
_CHUNK = 1 << 16       # compressed bytes decompressed at a time


class NotJSON(ValueError):
    """A jsonl line that does not parse: a record that failed, counted by the caller."""


def record_files(source: str, split: str | None, what: str) -> list[Path]:
    """The files of `source` in order: the file itself, the arrow shards of a Hugging Face dataset folder (its
    `split`), or the jsonl, json, parquet and arrow files under a folder. `what` names the input in errors."""
    path = local_path(source)
    if not path.exists():
        raise SoloError(f"{what} {source} does not exist: pass a file or folder of records (jsonl, json, parquet, "
                        "arrow), a folder written by save_to_disk, or an hf://datasets/ path")
    shards = dataset_files(path, split, f"{what} {source}") if path.is_dir() else None
    if shards is not None:
        return shards
    if split is not None:
        raise SoloError(f"{what} {source}: split applies to a folder written by DatasetDict.save_to_disk or a "
                        "datasets cache folder, and this is neither; leave split out")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and not is_dataset_metadata(p) and format_of(p) in RECORD_FORMATS)
    if not files:
        raise SoloError(f"{what} {source} is a folder with no jsonl, json, parquet or arrow files in it, and not "
                        "one written by save_to_disk")
    return files


def read_records(path: Path) -> Iterator[tuple[int, object]]:
    """(number, record) of each record of a file, numbered from 0 (a jsonl file's line, a table's row); a jsonl
    line that does not parse is a `NotJSON`. A file damaged before its end raises SoloError, naming it."""
    fmt = format_of(path)
    count = 0
    try:
        if fmt in ("parquet", "arrow"):
            batches = (pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS) if fmt == "parquet"
                       else arrow_batches(path))
            for batch in batches:
                for row in batch.to_pylist():
                    # A null cell is a field the record lacks, as in JSON: columns are shared by every row.
                    yield count, {key: value for key, value in row.items() if value is not None}
                    count += 1
            return
        if fmt == "json" or (fmt != "jsonl" and _opens_a_list(path)):
            yield from enumerate(_json_list(path))
            return
        with _text(path) as lines:
            for number, line in enumerate(lines):
                if line.strip():
                    count += 1
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError:
                        yield number, NotJSON("not JSON")
    except (OSError, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException) as error:
        problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SoloError(f"{path} is damaged after {count:,} records ({problem}): fix or leave out the file") from None


def _opens_a_list(path: Path) -> bool:
    with _text(path) as text:
        return text.read(_SNIFFED_CHARS).lstrip().startswith("[")


def _json_list(path: Path) -> list:
    with _text(path) as text:
        try:
            value = json.load(text)
        except json.JSONDecodeError as error:
            raise SoloError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    return value if isinstance(value, list) else [value]


@contextmanager
def _text(path: Path) -> Iterator[IO[str]]:
    """The file's text, decompressed as it is read when it is gzip or zstd (by its first bytes, whatever its
    name); bytes that are not UTF-8 become U+FFFD, so such a line fails as JSON rather than stopping the read."""
    with path.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic[:2] == _GZIP_MAGIC:
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw)
        elif magic == _ZSTD_MAGIC:
            stream = io.BufferedReader(_ZstdFrames(raw))
        else:
            stream = raw
        with io.TextIOWrapper(stream, encoding="utf-8", errors="replace") as text:
            yield text


class _ZstdFrames(io.RawIOBase):
    """A zstd stream decompressed as it is read, frame after frame. Unlike zstandard's own stream reader, which
    ends quietly where a truncated file does, it raises ZstdError when the file ends inside a frame."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.frame = zstandard.ZstdDecompressor().decompressobj()
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            compressed = self.raw.read(_CHUNK)
            if not compressed:
                if not self.frame.eof:
                    raise zstandard.ZstdError("the file ends before its compressed data does (truncated)")
                return 0
            if self.frame.eof:  # the next frame of a file written frame by frame
                self.frame = zstandard.ZstdDecompressor().decompressobj()
            self.pending = self.frame.decompress(compressed)
            while self.frame.eof and self.frame.unused_data:
                rest = self.frame.unused_data
                self.frame = zstandard.ZstdDecompressor().decompressobj()
                self.pending += self.frame.decompress(rest)
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size
