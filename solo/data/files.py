"""One input file into records `{id, text, domain, reason, duplicate_of, source}`: the file's format from its
name, its compression (gzip, zstd) from its first bytes, and whatever a damaged file still holds. An input's
files: a file, a folder's files, or the arrow shards of a Hugging Face dataset (solo.data.hf).

A record that cannot be read is kept as a dropped record with its reason (`corrupt:json:…`,
`corrupt:no_text`, …). A file that cannot be read to its end (a half-downloaded shard, a truncated
gzip) gives the records before the damage, like any others, and one more: `corrupt:file`, whose
`source` is the file and whose `text` says what was wrong. Nothing here raises for bad data.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import zstandard

from solo.data.config import InputSpec
from solo.data.hf import DATASET_DICT, METADATA_FILES, arrow_batches, dataset_files, local_path
from solo.errors import SoloError

COLUMNS = ("id", "text", "domain", "reason", "duplicate_of", "source")
CORRUPT_FILE = "corrupt:file"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text"}
COMPRESSED_SUFFIXES = (".gz", ".zst")
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16  # bytes fed to a decompressor at a time: what a damaged stream gave up to its damage is kept
JSONL_BATCH = 10_000  # jsonl records handed on at a time


def record(id_: str, text: str, domain: str, reason: str = "", source: str = "") -> dict:
    return {"id": id_, "text": text, "domain": domain, "reason": reason, "duplicate_of": "", "source": source}


def stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def input_format(spec: InputSpec, path: Path) -> str:
    return spec.format if spec.format != "auto" else format_of(path)


def format_of(path: Path) -> str:
    """A file's format by its name, compression suffixes aside: jsonl, json, parquet, arrow, else text."""
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    return "text"


def is_text_input(spec: InputSpec, path: Path) -> bool:
    """Whether a file read as text is one: a folder of text may hold images and archives too."""
    if spec.format != "auto" or input_format(spec, path) != "text":
        return True
    suffixes = [s.lower() for s in path.suffixes]
    base = suffixes[-2] if len(suffixes) >= 2 and suffixes[-1] in COMPRESSED_SUFFIXES else (
        suffixes[-1] if suffixes else "")
    return base in TEXT_SUFFIXES | {""}


def resolve_files(spec: InputSpec) -> list[Path]:
    """The files of an input, in order: the file itself, the arrow shards of a Hugging Face dataset folder (its
    `split`), or every file under a folder (but the descriptions `datasets` writes beside arrow shards)."""
    path = local_path(spec.path)
    if not path.exists():
        raise SoloError(f"input {spec.path} does not exist: pass an existing file or folder, or `embedded`")
    shards = dataset_files(path, spec.split, f"input {spec.path}") if path.is_dir() else None
    if shards is not None:
        return shards
    if spec.split is not None:
        raise SoloError(f"input {spec.path}: split applies to a folder written by DatasetDict.save_to_disk or a "
                        "datasets cache folder, and this is neither; leave split out")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and not is_dataset_metadata(p))
    if not files:
        raise SoloError(f"input folder {spec.path} has no files")
    return files


def is_dataset_metadata(path: Path) -> bool:
    """A description `datasets` wrote (dataset_dict.json; state.json and dataset_info.json beside arrow shards):
    no record, in a folder that holds datasets among other files."""
    return path.name == DATASET_DICT or (path.name in METADATA_FILES and any(path.parent.glob("*.arrow")))


def decompress(payload: bytes) -> tuple[bytes, str]:
    """The payload decompressed when it is gzip or zstd (by its first bytes, whatever its name), and, when the
    stream is damaged, why: what came out before the damage is kept."""
    if payload[:2] != _GZIP_MAGIC and payload[:4] != _ZSTD_MAGIC:
        return payload, ""
    chunks, out = decompressed_chunks(io.BytesIO(payload)), []
    while True:
        try:
            out.append(next(chunks))
        except StopIteration as end:
            return b"".join(out), end.value


def decompressed_chunks(file: BinaryIO) -> Generator[bytes, None, str]:
    """A file's bytes as they are read, a chunk at a time, decompressed when it is gzip or zstd (by its first
    bytes, whatever its name). Returns why a damaged stream ended early ("" when it is whole), once what came
    out before the damage has been given."""
    head = file.read(_CHUNK)
    if head[:2] == _GZIP_MAGIC:
        return (yield from _members(head, file, "gzip"))
    if head[:4] == _ZSTD_MAGIC:
        return (yield from _members(head, file, "zstd"))
    while head:
        yield head
        head = file.read(_CHUNK)
    return ""


def _members(rest: bytes, file: BinaryIO, kind: str) -> Generator[bytes, None, str]:
    """A gzip file member after member, a zstd file frame after frame: bgzip, pigz and pzstd write many."""
    while rest:
        stream = (zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if kind == "gzip"
                  else zstandard.ZstdDecompressor().decompressobj())
        try:
            while not stream.eof:
                if not rest:
                    rest = file.read(_CHUNK)
                    if not rest:
                        break
                out, rest = stream.decompress(rest), b""
                if out:
                    yield out
        except (zlib.error, zstandard.ZstdError) as error:
            return f"{kind}: {error}"
        if not stream.eof:
            if kind == "gzip":
                yield stream.flush()
            return f"{kind}: the file ends before its compressed data does (truncated)"
        rest = stream.unused_data or file.read(_CHUNK)  # the next member starts where this one ended
    return ""


def parse_file(spec: InputSpec, path: Path, payload: bytes) -> list[dict]:
    """Records of one file (text, jsonl or a JSON list; compressed or not), damaged ones included."""
    fmt = input_format(spec, path)
    if fmt == "text" and not is_text_input(spec, path):
        return []
    if fmt == "jsonl":
        return [r for batch in jsonl_records(spec, path, io.BytesIO(payload)) for r in batch]
    payload, damage = decompress(payload)
    if damage:  # a truncated document or list is not worth keeping in part
        return [_damaged(spec, path, damage)]
    if fmt == "text":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return [record(stable_id(str(path)), "", spec.domain, f"corrupt:utf8:{e.reason}", str(path))]
        return [record(stable_id(str(path)), text, spec.domain, source=str(path))]
    try:
        rows = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [record(stable_id(str(path)), "", spec.domain, f"corrupt:json:{e}", str(path))]
    rows = rows if isinstance(rows, list) else [rows]
    return [from_row(spec, path, i, row) for i, row in enumerate(rows)]


def jsonl_records(spec: InputSpec, path: Path, file: BinaryIO) -> Iterator[list[dict]]:
    """The records of a jsonl file (compressed or not) as it is read, in batches of the lines of the chunks read
    until JSONL_BATCH are in hand: a shard is never held whole. A line that is not JSON is a `corrupt:json`
    record; a damaged file gives the records before the damage (the line it cut short is none of them), then its
    `corrupt:file` record."""
    chunks = decompressed_chunks(file)
    batch: list[dict] = []
    partial: list[bytes] = []  # the line read so far, its newline still to come
    given = number = 0
    while True:
        try:
            chunk = next(chunks)
        except StopIteration as end:
            damage = end.value
            break
        *lines, rest = chunk.split(b"\n")
        if lines:
            lines[0], partial = b"".join([*partial, lines[0]]), []
        partial.append(rest)
        for line in lines:
            if line.strip():
                batch.append(_jsonl_record(spec, path, number, line))
            number += 1
        if len(batch) >= JSONL_BATCH:
            given += len(batch)
            yield batch
            batch = []
    last = b"".join(partial)
    if last.strip() and not damage:  # a last line with no newline after it
        batch.append(_jsonl_record(spec, path, number, last))
    if damage:
        batch.append(_damaged(spec, path, f"{damage}, after {given + len(batch):,} records"))
    if batch:
        yield batch


def _jsonl_record(spec: InputSpec, path: Path, index: int, line: bytes) -> dict:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return record(stable_id(str(path), str(index)), "", spec.domain, f"corrupt:json:{e}", f"{path}:{index + 1}")
    return from_row(spec, path, index, row)


def _damaged(spec: InputSpec, path: Path, why: str) -> dict:
    return record(stable_id("corrupt-file", str(path)), why, spec.domain, CORRUPT_FILE, str(path))


def damaged_file(spec: InputSpec, path: Path, why: str) -> dict:
    """The record of a file that could not be read at all (a parquet file whose footer is gone, say)."""
    return _damaged(spec, path, why)


def from_row(spec: InputSpec, path: Path, index: int, row: object) -> dict:
    source = f"{path}:{index + 1}"
    if not isinstance(row, dict):
        return record(stable_id(str(path), str(index)), "", spec.domain, "corrupt:not_an_object", source)
    text = row.get(spec.text_field)
    if not isinstance(text, str):
        return record(stable_id(str(path), str(index)), "", spec.domain, f"corrupt:no_{spec.text_field}", source)
    given = row.get(spec.id_field) if spec.id_field else None
    id_ = str(given) if given not in (None, "") else stable_id(str(path), str(index))
    return record(id_, text, spec.domain, source=source)


def arrow_records(spec: InputSpec, path: Path) -> Iterator[list[dict]]:
    """The records of an arrow file, a record batch at a time, by jsonl's rules (`from_row`: the id field where a
    row has one, else a stable id from the file and row; `source` the file and row). A damaged file gives the
    batches before the damage, then its `corrupt:file` record."""
    rows = 0
    try:
        for batch in arrow_batches(path):
            columns = [name for name in dict.fromkeys((spec.text_field, spec.id_field)) if name in batch.schema.names]
            table = batch.select(columns).to_pylist() if columns else [{}] * batch.num_rows
            records = [from_row(spec, path, rows + i, row) for i, row in enumerate(table)]
            rows += len(records)
            yield records
    except (OSError, pa.ArrowException) as error:
        yield [_damaged(spec, path, f"arrow: {str(error).splitlines()[0]}, after {rows:,} records")]


def parquet_records(spec: InputSpec, table: pa.Table | pa.RecordBatch, path: str | None = None) -> list[dict]:
    """Records of a parquet table or batch (`path`: its file, else a `path` column as Ray Data adds): the id
    column where the row has one, else a hash of the input and the text; a row whose text is missing or
    not a string is `corrupt:no_<text_field>`."""
    if spec.text_field not in table.schema.names:
        raise SoloError(f"parquet input {path or spec.path} has no column {spec.text_field!r} (its columns: "
                        f"{', '.join(n for n in table.schema.names if n != 'path')}): set text_field")
    texts = table.column(spec.text_field).to_pylist()
    ids = (table.column(spec.id_field).to_pylist()
           if spec.id_field and spec.id_field in table.schema.names else [None] * len(texts))
    paths = [path] * len(texts) if path is not None else table.column("path").to_pylist()
    return [record(str(i) if i not in (None, "") else stable_id(spec.path, t or ""), t or "", spec.domain,
                   "" if isinstance(t, str) and t else f"corrupt:no_{spec.text_field}",
                   f"{p}#{stable_id(t or '')}")
            for i, t, p in zip(ids, texts, paths)]


def head(path: Path, raw_bytes: int) -> tuple[bytes, bool]:
    """The start of the file's content, decompressed, from its first `raw_bytes`: what a check of its first
    records reads; and whether the file is compressed, and so may end short of that by design."""
    with path.open("rb") as f:
        raw = f.read(raw_bytes)
    content, damage = decompress(raw)
    return content, content is not raw or bool(damage)
