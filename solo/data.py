"""The data stage: raw text in, clean deduplicated parquet out, as a Ray Data stream.

    read → normalize → length filters → exact dedup (over the whole corpus) → data/ + dropped/

Every record that does not survive is written to `dropped/` with the rule that dropped it,
so nothing is lost silently; a corrupt record (bad JSON, invalid UTF-8, no text) is counted
and skipped, never fatal.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
import unicodedata
from pathlib import Path

import pyarrow as pa

from solo import corpus
from solo.config import DataConfig, InputSpec
from solo.errors import SoloError

COLUMNS = ["id", "text", "domain", "reason", "duplicate_of"]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
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


def normalize(text: str) -> str:
    """NFC, no control characters, single spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def read_inputs(config: DataConfig):
    """One Ray Dataset of records `{id, text, domain, reason, duplicate_of}` over all inputs."""
    import ray.data

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


class _ParquetRows:
    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.spec.text_field not in table.column_names:
            raise SoloError(f"parquet input {self.spec.path} has no column {self.spec.text_field!r}")
        texts = table.column(self.spec.text_field).to_pylist()
        ids = (table.column(self.spec.id_field).to_pylist()
               if self.spec.id_field and self.spec.id_field in table.column_names else [None] * len(texts))
        rows = [
            _record(str(i) if i not in (None, "") else _stable_id(self.spec.path, t or ""), t or "", self.spec.domain,
                    "" if isinstance(t, str) and t else f"corrupt:no_{self.spec.text_field}")
            for i, t in zip(ids, texts)
        ]
        return pa.Table.from_pylist(rows)


def clean(batch: dict, min_chars: int, max_chars: int) -> dict:
    """Normalize text and mark the length rules' drops; adds the exact-dedup key."""
    texts, reasons, keys = [], [], []
    for text, reason in zip(batch["text"], batch["reason"]):
        text = normalize(text) if not reason else text
        if not reason and not text:
            reason = "empty"
        elif not reason and len(text) < min_chars:
            reason = "too_short"
        elif not reason and len(text) > max_chars:
            reason = "too_long"
        texts.append(text)
        reasons.append(reason)
        keys.append(hashlib.sha256(text.encode()).hexdigest()[:32] if not reason else "")
    return {**batch, "text": texts, "reason": reasons, "dedup_key": keys}


def exact_survivors(staged) -> dict[str, str]:
    """Text hash → the id that survives it (the smallest: the same input gives the same survivor).

    Only (id, hash) pairs travel to the driver, about 50 bytes a document, so the dedup is over
    the whole corpus rather than per shard.
    """
    survivors: dict[str, str] = {}
    for batch in staged.select_columns(["id", "dedup_key"]).iter_batches(batch_format="pyarrow", batch_size=65536):
        for id_, key in zip(batch.column("id").to_pylist(), batch.column("dedup_key").to_pylist()):
            if key and (key not in survivors or id_ < survivors[key]):
                survivors[key] = id_
    return survivors


def mark_duplicates(batch: dict, survivors: dict[str, str]) -> dict:
    reasons, duplicate_of = list(batch["reason"]), list(batch["duplicate_of"])
    for i, (id_, key) in enumerate(zip(batch["id"], batch["dedup_key"])):
        survivor = survivors.get(key)
        if survivor is not None and survivor != id_:
            reasons[i], duplicate_of[i] = "dup_exact", survivor
    return {**batch, "reason": reasons, "duplicate_of": duplicate_of}


def prepare(config: DataConfig, output: Path, progress=print) -> dict:
    """Run the data stage into `output`; returns its metrics."""
    import shutil

    import ray.data

    started = time.time()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same input → same shards, run after run
    ctx.enable_progress_bars = False

    staged_dir = output / "_staged"
    read_inputs(config).map_batches(clean, fn_kwargs={"min_chars": config.min_chars, "max_chars": config.max_chars}) \
        .write_parquet(str(staged_dir))
    staged = ray.data.read_parquet(str(staged_dir))
    if config.exact_dedup:
        staged = staged.map_batches(mark_duplicates, fn_kwargs={"survivors": exact_survivors(staged)})
    decided = staged.drop_columns(["dedup_key"]).materialize()

    kept = decided.filter(lambda r: r["reason"] == "").select_columns(["id", "text", "domain"])
    kept.repartition(max(1, -(-kept.count() // config.rows_per_shard))).write_parquet(str(output / "data"))
    decided.filter(lambda r: r["reason"] != "").write_parquet(str(output / "dropped"))
    shutil.rmtree(staged_dir)

    report = _report(decided, time.time() - started)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.md").write_text(_report_markdown(report))
    progress(f"data: kept {report['kept']:,} of {report['read']:,} documents "
             f"({report['kept_bytes'] / 1e6:.1f} MB); dropped {report['dropped_by_reason']}")
    return {"documents": report["kept"], "bytes": report["kept_bytes"], "dropped": report["read"] - report["kept"],
            "docs_per_s": report["docs_per_s"]}


def _report(decided, seconds: float) -> dict:
    rows = decided.select_columns(["reason", "domain", "text", "id"]).take_all()
    dropped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    per_domain: dict[str, dict[str, int]] = {}
    kept = kept_bytes = 0
    for row in rows:
        reason = row["reason"]
        if not reason:
            kept += 1
            size = len(row["text"].encode())
            kept_bytes += size
            domain = per_domain.setdefault(row["domain"], {"documents": 0, "bytes": 0})
            domain["documents"] += 1
            domain["bytes"] += size
            continue
        rule = reason.split(":", 1)[0] if reason.startswith("corrupt") else reason
        dropped[rule] = dropped.get(rule, 0) + 1
        if len(examples.setdefault(rule, [])) < 3:
            examples[rule].append(f"{row['id']}: {reason if rule == 'corrupt' else row['text'][:120]!r}")
    return {
        "read": len(rows), "kept": kept, "kept_bytes": kept_bytes, "dropped_by_reason": dropped,
        "examples": examples, "domains": per_domain, "seconds": round(seconds, 2),
        "docs_per_s": round(len(rows) / max(seconds, 1e-9), 1),
    }


def _report_markdown(report: dict) -> str:
    lines = ["# Data report", "", f"Read {report['read']:,} documents, kept {report['kept']:,} "
             f"({report['kept_bytes'] / 1e6:.2f} MB) in {report['seconds']} s ({report['docs_per_s']} docs/s).", "",
             "| rule | dropped | examples |", "| --- | ---: | --- |"]
    for rule, count in sorted(report["dropped_by_reason"].items()):
        shown = "<br>".join(e.replace("|", "\\|").replace("\n", " ") for e in report["examples"].get(rule, []))
        lines.append(f"| {rule} | {count:,} | {shown} |")
    lines += ["", "| domain | documents | MB |", "| --- | ---: | ---: |"]
    for domain, d in sorted(report["domains"].items()):
        lines.append(f"| {domain} | {d['documents']:,} | {d['bytes'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"
