"""The one reader of raw inputs: files of text, jsonl, json or parquet (gzipped too), a folder of them, or the
embedded corpus; each becomes records `{id, text, domain, reason, duplicate_of}`, a corrupt one with its
reason (`corrupt:<why>`) rather than an error. Both a Ray Data stream (the data stage) and a plain iterator
(the tokenizer trained on raw files) read through here, by the same rules."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from solo.data import corpus
from solo.data.config import DataConfig, InputSpec
from solo.data.normalize import normalize
from solo.errors import SoloError

_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text"}


def _record(id_: str, text: str, domain: str, reason: str = "") -> dict:
    return {"id": id_, "text": text, "domain": domain, "reason": reason, "duplicate_of": ""}


def _stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _input_format(spec: InputSpec, path: Path) -> str:
    if spec.format != "auto":
        return spec.format
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


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


def parse_file(spec: InputSpec, path: Path, payload: bytes) -> list[dict]:
    """Records of one file; corrupt ones come back with reason `corrupt:<why>`."""
    fmt = _input_format(spec, path)
    if payload[:2] == b"\x1f\x8b":  # still gzipped (Ray decompresses by extension, not by content)
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError) as e:
            return [_record(_stable_id(str(path)), "", spec.domain, f"corrupt:gzip:{e}")]
    if fmt == "text" and path.suffix.lower() not in _TEXT_SUFFIXES | {".gz", ""} and spec.format == "auto":
        return []  # a folder of text may hold images, archives: they are not text inputs
    if fmt == "text":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return [_record(_stable_id(str(path)), "", spec.domain, f"corrupt:utf8:{e.reason}")]
        return [_record(_stable_id(str(path)), text, spec.domain)]
    if fmt == "json":
        try:
            rows = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return [_record(_stable_id(str(path)), "", spec.domain, f"corrupt:json:{e}")]
        rows = rows if isinstance(rows, list) else [rows]
        return [_from_row(spec, path, i, row) for i, row in enumerate(rows)]
    records = []
    for i, line in enumerate(payload.split(b"\n")):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            records.append(_record(_stable_id(str(path), str(i)), "", spec.domain, f"corrupt:json:{e}"))
            continue
        records.append(_from_row(spec, path, i, row))
    return records


def _from_row(spec: InputSpec, path: Path, index: int, row: object) -> dict:
    if not isinstance(row, dict):
        return _record(_stable_id(str(path), str(index)), "", spec.domain, "corrupt:not_an_object")
    text = row.get(spec.text_field)
    if not isinstance(text, str):
        return _record(_stable_id(str(path), str(index)), "", spec.domain, f"corrupt:no_{spec.text_field}")
    given = row.get(spec.id_field) if spec.id_field else None
    id_ = str(given) if given not in (None, "") else _stable_id(str(path), str(index))
    return _record(id_, text, spec.domain)


def read_inputs(config: DataConfig):
    """One Ray Dataset of records `{id, text, domain, reason, duplicate_of}` over all inputs."""
    datasets = []
    for spec in config.inputs:
        if spec.path == "embedded":
            docs = corpus.documents(spec.max_documents)
            records = [_record(d["id"], d["text"], spec.domain) for d in docs]
            # A block per ~2 MB of text: thousands of tiny blocks cost more to schedule than to clean.
            blocks = max(1, sum(len(r["text"]) for r in records) // 2_000_000)
            datasets.append(ray.data.from_items(records, override_num_blocks=blocks))
            continue
        files = resolve_files(spec)
        parquet = [f for f in files if _input_format(spec, f) == "parquet"]
        others = [str(f) for f in files if f not in parquet]
        if parquet:
            ds = ray.data.read_parquet([str(f) for f in parquet])
            datasets.append(ds.map_batches(_ParquetRows(spec), batch_format="pyarrow"))
        if others:
            ds = ray.data.read_binary_files(others, include_paths=True)
            datasets.append(ds.flat_map(lambda row, spec=spec: parse_file(spec, Path(row["path"]), row["bytes"])))
        if spec.max_documents is not None:
            datasets[-1] = datasets[-1].limit(spec.max_documents)
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def parquet_records(spec: InputSpec, table: pa.Table | pa.RecordBatch) -> list[dict]:
    """Records of a parquet table or batch: the id column where the row has one, else a hash of the input and
    the text; a row whose text is missing or not a string is `corrupt:no_<text_field>`."""
    if spec.text_field not in table.schema.names:
        raise SoloError(f"parquet input {spec.path} has no column {spec.text_field!r}")
    texts = table.column(spec.text_field).to_pylist()
    ids = (table.column(spec.id_field).to_pylist()
           if spec.id_field and spec.id_field in table.schema.names else [None] * len(texts))
    return [_record(str(i) if i not in (None, "") else _stable_id(spec.path, t or ""), t or "", spec.domain,
                    "" if isinstance(t, str) and t else f"corrupt:no_{spec.text_field}")
            for i, t in zip(ids, texts)]


class _ParquetRows:
    """parquet_records over a Ray Data batch."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, table: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(parquet_records(self.spec, table))


# ---------------------------------------------------------------- one pass in this process

Document = tuple[str, str, str]  # (id, text, domain)
Documents = Callable[[], Iterator[Document]]  # a fresh pass over the corpus on every call


def input_records(spec: InputSpec) -> Iterator[dict]:
    """Records of one input, a file at a time (a parquet file a batch at a time), as read_inputs reads them."""
    if spec.path == "embedded":
        yield from (_record(doc["id"], doc["text"], spec.domain) for doc in corpus.documents(spec.max_documents))
        return
    for path in resolve_files(spec):
        if _input_format(spec, path) == "parquet":
            for batch in pq.ParquetFile(path).iter_batches():
                yield from parquet_records(spec, batch)
        else:
            yield from parse_file(spec, path, path.read_bytes())


def raw_documents(inputs: Iterable[InputSpec]) -> Iterator[Document]:
    """Raw inputs as the data stage reads them (its parsers, its normalization), one file at a time; corrupt
    and empty records are skipped. No filters or dedup: for a tokenizer trained on raw files."""
    for spec in inputs:
        texts = ((r["id"], normalize(r["text"])) for r in input_records(spec) if not r["reason"])
        for doc_id, text in itertools.islice(((i, t) for i, t in texts if t), spec.max_documents):
            yield doc_id, text, spec.domain


def prepared_documents(data_dir: Path) -> Iterator[Document]:
    """The data stage's output (its `data/` parquet, or a folder of the user's with `id` and `text` columns),
    one record batch at a time."""
    dataset = pads.dataset(str(data_dir), format="parquet")
    has_domain = "domain" in dataset.schema.names  # a folder of the user's may have none
    for batch in dataset.to_batches(columns=["id", "text", "domain"] if has_domain else ["id", "text"]):
        ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        domains = batch.column("domain").to_pylist() if has_domain else ["default"] * len(ids)
        yield from zip(ids, texts, domains)
