"""The one reader of raw inputs: files of text, jsonl, json, parquet or arrow (jsonl and json gzipped or
zstd-compressed too), a folder of them, a Hugging Face dataset folder or hf:// path (solo.data.hf), or the
embedded corpus, each record `{id, text, domain, reason, duplicate_of, source}`
(solo.data.files). Both a Ray Data stream (the data stage) and a plain iterator (the tokenizer trained
on raw files) read through here, by the same rules; `check_inputs` looks at every input before either
starts, so that a mistake (no such field, nothing to read) is one clear line, not a failed Ray job."""

from __future__ import annotations

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
from solo.data.files import (
    arrow_records,
    damaged_file,
    decompress,
    head,
    input_format,
    is_text_input,
    jsonl_records,
    parquet_records,
    parse_file,
    record,
    resolve_files,
)
from solo.data.hf import arrow_batches, arrow_schema
from solo.data.normalize import normalize
from solo.errors import SoloError

CHECKED_BYTES = 1 << 20  # of each jsonl file: its first records say whether the fields are there
CHECKED_RECORDS = 100


def read_inputs(config: DataConfig):
    """One Ray Dataset of records over all inputs."""
    datasets = []
    for spec in config.inputs:
        if spec.path == "embedded":
            docs = corpus.documents(spec.max_documents)
            records = [record(d["id"], d["text"], spec.domain, source="embedded") for d in docs]
            # A block per ~2 MB of text: thousands of tiny blocks cost more to schedule than to clean.
            blocks = max(1, sum(len(r["text"]) for r in records) // 2_000_000)
            datasets.append(ray.data.from_items(records, override_num_blocks=blocks))
            continue
        files = resolve_files(spec)
        parquet = [f for f in files if input_format(spec, f) == "parquet"]
        arrow = [str(f) for f in files if input_format(spec, f) == "arrow"]
        others = [str(f) for f in files if f not in parquet and input_format(spec, f) != "arrow"]
        readable, damaged = _parquet_files(spec, parquet)
        if readable:
            ds = ray.data.read_parquet([str(f) for f in readable], include_paths=True)
            datasets.append(ds.map_batches(_ParquetRows(spec), batch_format="pyarrow"))
        if damaged:
            datasets.append(ray.data.from_items(damaged))
        if arrow:  # a task per file, a table per record batch: a shard is never read whole
            ds = ray.data.from_items([{"path": path} for path in arrow], override_num_blocks=len(arrow))
            datasets.append(ds.map_batches(_FileRows(spec, arrow_records), batch_size=1, batch_format="pyarrow"))
        if others:
            # Each task reads its files itself, so that they are decompressed by their first bytes (and a damaged
            # one salvaged): Ray's binary reader decompresses by file name, and fails the whole read on a
            # truncated .gz.
            ds = ray.data.from_items([{"path": path} for path in others], override_num_blocks=len(others))
            datasets.append(ds.map_batches(_FileRows(spec, file_records), batch_size=1, batch_format="pyarrow"))
        if spec.max_documents is not None:
            datasets[-1] = datasets[-1].limit(spec.max_documents)
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _parquet_files(spec: InputSpec, files: list[Path]) -> tuple[list[Path], list[dict]]:
    """The parquet files whose footer reads, and a `corrupt:file` record for each of the others."""
    readable, damaged = [], []
    for path in files:
        try:
            pq.ParquetFile(path)
            readable.append(path)
        except (OSError, pa.ArrowException) as error:
            damaged.append(damaged_file(spec, path, f"parquet: {str(error).splitlines()[0]}"))
    return readable, damaged


class _ParquetRows:
    """parquet_records over a Ray Data batch (its `path` column names each row's file)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, table: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(parquet_records(self.spec, table))


class _FileRows:
    """The records of the file a one-row Ray Data batch names, read by `records_of` (file_records,
    arrow_records), a table per batch of records."""

    def __init__(self, spec: InputSpec, records_of: Callable[[InputSpec, Path], Iterator[list[dict]]]):
        self.spec, self.records_of = spec, records_of

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for records in self.records_of(self.spec, Path(batch.column("path")[0].as_py())):
            if records:
                yield pa.Table.from_pylist(records)


def file_records(spec: InputSpec, path: Path) -> Iterator[list[dict]]:
    """The records of a text, json or jsonl file: a jsonl file (the shards of web corpora, gigabytes at times) as
    it is read, a batch of lines at a time; a text document or a JSON list whole, as it must be parsed."""
    if input_format(spec, path) == "jsonl":
        with path.open("rb") as file:
            yield from jsonl_records(spec, path, file)
    else:
        yield parse_file(spec, path, path.read_bytes())


# ---------------------------------------------------------------- checked before anything runs


def check_inputs(config: DataConfig) -> None:
    """Every input looked at on this machine, before Ray starts: a mistake is one line naming the file.

    Refused: an input with no documents at all; a parquet file without the text column; a jsonl or JSON
    file none of whose first records has the text field (or the id field, when the config names one),
    each naming what the records do have. A damaged file is not refused: the stage reads what it holds."""
    for spec in config.inputs:
        if spec.path == "embedded":
            continue
        found = 0
        for path in resolve_files(spec):
            fmt = input_format(spec, path)
            if fmt == "parquet":
                found += _check_parquet(spec, path)
            elif fmt == "arrow":
                found += _check_arrow(spec, path)
            elif fmt in ("jsonl", "json"):
                found += _check_records(spec, path, fmt)
            elif is_text_input(spec, path):
                content, compressed = head(path, 1024)
                found += bool(content.strip()) or compressed  # a damaged file the stage reports
        if not found:
            raise SoloError(f"input {spec.path} holds no documents: its files are empty, or none of them is "
                            "text, jsonl, json, parquet or arrow")


def _check_parquet(spec: InputSpec, path: Path) -> int:
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):
        return 1  # damaged: the stage counts it, and reads the other files
    names = file.schema_arrow.names
    if spec.text_field not in names:
        raise SoloError(f"parquet input {path} has no column {spec.text_field!r} (its columns: {', '.join(names)}): "
                        "set text_field")
    if spec.id_field and "id_field" in spec.model_fields_set and spec.id_field not in names:
        raise SoloError(f"parquet input {path} has no column {spec.id_field!r} for id_field (its columns: "
                        f"{', '.join(names)})")
    return file.metadata.num_rows


def _check_arrow(spec: InputSpec, path: Path) -> int:
    """Its schema holds the text column (and the id column the config names); 1 for a file with rows or a damaged
    one (the stage counts it), 0 for an empty one."""
    try:
        names = arrow_schema(path).names
    except (OSError, pa.ArrowException):
        return 1  # damaged: the stage counts it, and reads the other files
    for what, name, required in (("text_field", spec.text_field, True),
                                 ("id_field", spec.id_field, "id_field" in spec.model_fields_set)):
        if name and required and name not in names:
            raise SoloError(f"arrow input {path} has no column {name!r} ({what}); its columns: {', '.join(names)}")
    try:
        return int(any(batch.num_rows for batch in arrow_batches(path)))
    except (OSError, pa.ArrowException):
        return 1


def _check_records(spec: InputSpec, path: Path, fmt: str) -> int:
    if fmt == "json":  # one JSON value: read whole, as the stage will
        try:
            rows = json.loads(decompress(path.read_bytes())[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 1  # the stage counts it as corrupt
        rows = rows if isinstance(rows, list) else [rows]
    else:
        content, compressed = head(path, CHECKED_BYTES)
        if compressed and not content.strip():
            return 1  # damaged before its first record: the stage reports it
        lines = content.split(b"\n")
        if len(content) >= CHECKED_BYTES:
            lines.pop()  # it may be cut short here
        rows = []
        for line in (line for line in lines if line.strip()):
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                rows.append(None)
            if len(rows) >= CHECKED_RECORDS:
                break
    objects = [row for row in rows[:CHECKED_RECORDS] if isinstance(row, dict)]
    if not objects:
        return len(rows)
    fields = sorted({key for row in objects for key in row})
    for what, name, required in (("text_field", spec.text_field, True),
                                 ("id_field", spec.id_field, "id_field" in spec.model_fields_set)):
        if name and required and not any(name in row for row in objects):
            raise SoloError(f"{path}: no record of its first {len(objects)} has the field {name!r} ({what}); "
                            f"their fields: {', '.join(fields)}")
    return len(rows)


# ---------------------------------------------------------------- one pass in this process

Document = tuple[str, str, str]  # (id, text, domain)
Documents = Callable[[], Iterator[Document]]  # a fresh pass over the corpus on every call


def input_records(spec: InputSpec) -> Iterator[dict]:
    """Records of one input, a file at a time (a jsonl, parquet or arrow file a batch at a time), as read_inputs
    reads them."""
    if spec.path == "embedded":
        yield from (record(doc["id"], doc["text"], spec.domain, source="embedded")
                    for doc in corpus.documents(spec.max_documents))
        return
    for path in resolve_files(spec):
        if input_format(spec, path) == "arrow":
            yield from itertools.chain.from_iterable(arrow_records(spec, path))
        elif input_format(spec, path) == "parquet":
            readable, damaged = _parquet_files(spec, [path])
            yield from damaged
            for batch in (pq.ParquetFile(path).iter_batches() if readable else []):
                yield from parquet_records(spec, batch, str(path))
        else:
            yield from itertools.chain.from_iterable(file_records(spec, path))


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
