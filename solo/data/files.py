"""One input file into records `{id, text, domain, reason, duplicate_of, source}`: the file's format from its
name, its compression (gzip, zstd) from its first bytes, and whatever a damaged file still holds.

A record that cannot be read is kept as a dropped record with its reason (`corrupt:json:…`,
`corrupt:no_text`, …). A file that cannot be read to its end (a half-downloaded shard, a truncated
gzip) gives the records before the damage, like any others, and one more: `corrupt:file`, whose
`source` is the file and whose `text` says what was wrong. Nothing here raises for bad data.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pyarrow as pa
import zstandard

from solo.data.config import InputSpec
from solo.errors import SoloError

COLUMNS = ("id", "text", "domain", "reason", "duplicate_of", "source")
CORRUPT_FILE = "corrupt:file"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text"}
COMPRESSED_SUFFIXES = (".gz", ".zst")
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16  # bytes fed to a decompressor at a time: what a damaged stream gave up to its damage is kept


def record(id_: str, text: str, domain: str, reason: str = "", source: str = "") -> dict:
    return {"id": id_, "text": text, "domain": domain, "reason": reason, "duplicate_of": "", "source": source}


def stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def input_format(spec: InputSpec, path: Path) -> str:
    if spec.format != "auto":
        return spec.format
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
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
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise SoloError(f"input {spec.path} does not exist: pass an existing file or folder, or `embedded`")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SoloError(f"input folder {spec.path} has no files")
    return files


def decompress(payload: bytes) -> tuple[bytes, str]:
    """The payload decompressed when it is gzip or zstd (by its first bytes, whatever its name), and, when the
    stream is damaged, why: what came out before the damage is kept."""
    if payload[:2] == _GZIP_MAGIC:
        return _inflate(payload)
    if payload[:4] == _ZSTD_MAGIC:
        return _unzstd(payload)
    return payload, ""


def _inflate(payload: bytes) -> tuple[bytes, str]:
    out, rest = [], payload
    while rest:  # a gzip file may be several members one after the other
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        position = 0
        try:
            while position < len(rest) and not stream.eof:
                out.append(stream.decompress(rest[position:position + _CHUNK]))
                position += _CHUNK
        except zlib.error as error:
            return b"".join(out), f"gzip: {error}"
        if not stream.eof:
            return b"".join(out) + stream.flush(), "gzip: the file ends before its compressed data does (truncated)"
        rest = stream.unused_data
    return b"".join(out), ""


def _unzstd(payload: bytes) -> tuple[bytes, str]:
    out, rest = [], payload
    while rest:  # a zstd file may be several frames one after the other
        stream = zstandard.ZstdDecompressor().decompressobj()
        position = 0
        try:
            while position < len(rest) and not stream.eof:
                out.append(stream.decompress(rest[position:position + _CHUNK]))
                position += _CHUNK
        except zstandard.ZstdError as error:
            return b"".join(out), f"zstd: {error}"
        if not stream.eof:
            return b"".join(out), "zstd: the file ends before its compressed data does (truncated)"
        rest = stream.unused_data
    return b"".join(out), ""


def parse_file(spec: InputSpec, path: Path, payload: bytes) -> list[dict]:
    """Records of one file (text, jsonl or a JSON list; compressed or not), damaged ones included."""
    fmt = input_format(spec, path)
    if fmt == "text" and not is_text_input(spec, path):
        return []
    payload, damage = decompress(payload)
    if damage and fmt in ("text", "json"):  # a truncated document or list is not worth keeping in part
        return [_damaged(spec, path, damage)]
    if fmt == "text":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return [record(stable_id(str(path)), "", spec.domain, f"corrupt:utf8:{e.reason}", str(path))]
        return [record(stable_id(str(path)), text, spec.domain, source=str(path))]
    if fmt == "json":
        try:
            rows = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return [record(stable_id(str(path)), "", spec.domain, f"corrupt:json:{e}", str(path))]
        rows = rows if isinstance(rows, list) else [rows]
        return [from_row(spec, path, i, row) for i, row in enumerate(rows)]
    lines = payload.split(b"\n")
    if damage and lines and lines[-1]:  # the line the damage cut short is no record of the file's
        lines.pop()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            records.append(record(stable_id(str(path), str(i)), "", spec.domain, f"corrupt:json:{e}",
                                  f"{path}:{i + 1}"))
            continue
        records.append(from_row(spec, path, i, row))
    return records + ([_damaged(spec, path, f"{damage}, after {len(records):,} records")] if damage else [])


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
