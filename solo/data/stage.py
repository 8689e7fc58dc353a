"""The data stage: raw text in, clean deduplicated parquet out, as a Ray Data stream.

    read → normalize → boilerplate lines → length, language and quality rules → quality
    classifier (optional) → PII scrub → exact dedup → MinHash near dedup (both over the whole
    corpus) → eval decontamination → domain mixing → data/ + dropped/

Every record that does not survive is written to `dropped/` with the rule that dropped it,
so nothing is lost silently; a corrupt record (bad JSON, invalid UTF-8, no text) is counted
and skipped, never fatal.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import sys
import time
import unicodedata
from pathlib import Path

import pyarrow as pa

from solo.data import boilerplate
from solo.data import corpus
from solo.data import decontam
from solo.data import mixing
from solo.data import neardedup
from solo.data import pii
from solo.data import classifier as quality_classifier
from solo.data import quality as quality_rules
from solo.data.boilerplate import remove_lines
from solo.data.config import DataConfig, InputSpec
from solo.errors import SoloError
from solo.data.language import language_reason

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


CLEANING_COUNTS = ("boilerplate_lines", "pii_email", "pii_ip", "pii_phone")


def clean(batch: dict, config: DataConfig, boilerplate: frozenset[int] = frozenset(),
          classifier: quality_classifier.Model | None = None) -> dict:
    """Normalize, remove boilerplate lines, apply the length, language and quality rules, then the
    quality classifier (the first rule a document trips is its `reason`), scrub PII from what is
    kept; adds the exact-dedup key and the per-document counts the report sums (`pii_*`,
    `boilerplate_lines`)."""
    f = config.filters
    unfiltered = {spec.domain for spec in config.inputs if not spec.applies_quality_filters()}
    out: dict[str, list] = {name: [] for name in ("text", "reason", "dedup_key", *CLEANING_COUNTS)}
    for text, reason, domain in zip(batch["text"], batch["reason"], batch["domain"]):
        counts = dict.fromkeys(CLEANING_COUNTS, 0)
        if not reason:
            text = normalize(text)
            if boilerplate:
                text, counts["boilerplate_lines"] = remove_lines(text, domain, boilerplate)
                text = _BLANK_LINES.sub("\n\n", text)
            text, reason = _first_rule(text, config, domain not in unfiltered, classifier)
        if not reason and f.pii.enabled:
            text, found = pii.scrub(text, f.pii)
            for kind, n in found.items():
                counts[f"pii_{kind}"] = n
        out["text"].append(text)
        out["reason"].append(reason)
        out["dedup_key"].append(hashlib.sha256(text.encode()).hexdigest()[:32] if not reason else "")
        for name, n in counts.items():
            out[name].append(n)
    return {**batch, **out}


def _first_rule(text: str, config: DataConfig, quality: bool,
                classifier: quality_classifier.Model | None = None) -> tuple[str, str]:
    """(text, reason) after the rules in FineWeb's order, then the classifier; C4 may remove lines
    from the text. `quality` false (code, docs): the length rules only, language id is no judge of
    code either, nor a classifier trained on web pages."""
    f = config.filters
    if not text:
        return text, "empty"
    if len(text) < config.min_chars:
        return text, "too_short"
    if len(text) > config.max_chars:
        return text, "too_long"
    if not quality:
        return text, ""
    if f.language.enabled and (reason := language_reason(text, f.language)):
        return text, reason
    text, reason = quality_rules.apply(text, f)
    if not reason and classifier is not None and classifier.score(text) < f.classifier.threshold:
        reason = "quality_classifier"
    return text, reason


def cleaning_stats(staged_dir: Path) -> dict[str, int]:
    """The per-document counts of `clean`, summed from the staged pass one column batch at a time."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    totals = dict.fromkeys(CLEANING_COUNTS, 0)
    staged = pads.dataset(str(staged_dir), format="parquet")
    for batch in staged.to_batches(columns=list(CLEANING_COUNTS), batch_size=65536):
        for name in CLEANING_COUNTS:
            totals[name] += int(pc.sum(batch.column(name)).as_py() or 0)
    return totals


def frequent_lines(config: DataConfig) -> frozenset[int]:
    """The boilerplate lines' keys: a first pass over the normalized inputs (see solo.data.boilerplate).
    It reads and normalizes the inputs again rather than staging them: in Ray 2.60 each read of a
    parquet folder costs seconds of fixed overhead, more than parsing the inputs of most corpora."""
    if not config.filters.boilerplate.enabled:
        return frozenset()
    normalized = read_inputs(config).map_batches(_normalize_batch)
    return boilerplate.frequent_lines(normalized, config.filters.boilerplate)


def _normalize_batch(batch: dict) -> dict:
    return {**batch, "text": [normalize(t) if not r else t for t, r in zip(batch["text"], batch["reason"])]}


def exact_survivors(batches) -> dict[str, str]:
    """Text hash → the id that survives it (the smallest: the same input gives the same survivor).

    `batches`: pyarrow batches of (id, dedup_key). Only these pairs are read on the driver, about 50
    bytes a document, so the dedup is over the whole corpus rather than per shard.
    """
    survivors: dict[str, str] = {}
    for batch in batches:
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


# ---------------------------------------------------------------- resume
# A pass whose output is committed (its folder holds a marker naming the settings and inputs it was
# made from) is read back instead of being run again; anything else in its place is a killed
# attempt's leftovers and is removed first. Passes are deterministic, so a resumed run writes the
# same output as an uninterrupted one.

_MARKER = "_COMMITTED"
_SIGNATURE_SETTINGS = {"near", "shingle_words", "bands", "rows_per_band", "probe_half_bands", "seed"}


def _input_stats(config: DataConfig) -> list:
    stats = []
    for spec in config.inputs:
        if spec.path == "embedded":
            stats.append(["embedded", sys.version])
            continue
        stats += [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in resolve_files(spec)]
    if config.filters.classifier is not None:  # its examples decide what the cleaning pass keeps
        stats.append(quality_classifier.fingerprint(config.filters.classifier))
    return stats


def pass_key(config: DataConfig, *sections: str) -> str:
    """What the staged pass (which signs the documents too) or a later pass (its sections added) depends on."""
    later = {"dedup", "decontamination", "mixing", "rows_per_shard"}
    settings = config.model_dump(mode="json", exclude=later)
    settings["signatures"] = config.dedup.model_dump(mode="json", include=_SIGNATURE_SETTINGS)
    settings.update({name: getattr(config, name).model_dump(mode="json") for name in sections})
    canonical = json.dumps({"settings": settings, "inputs": _input_stats(config)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def committed(folder: Path, key: str) -> bool:
    marker = folder / _MARKER
    if marker.is_file() and marker.read_text() == key:
        return True
    if folder.exists():
        shutil.rmtree(folder)
    return False


def commit(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _MARKER).write_text(key)


# ---------------------------------------------------------------- dedup, decontamination, mixing


def deduplicate(staged_dir: Path, config: DataConfig, work: Path):
    """Exact, then near dedup over the whole corpus, decided on the driver from the staged pass's
    keys and signatures (never its texts); returns the marked dataset and the numbers."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    import ray.data

    keys = pads.dataset(str(staged_dir), format="parquet")
    survivors = exact_survivors(keys.to_batches(columns=["id", "dedup_key"], batch_size=65536)) \
        if config.dedup.exact else {}
    columns = [c for c in keys.schema.names if c not in neardedup.SIGNATURE_COLUMNS]  # the texts' columns
    staged = ray.data.read_parquet(str(staged_dir)).select_columns(columns) \
        .map_batches(mark_duplicates, fn_kwargs={"survivors": survivors})
    stats: dict = {"exact_duplicates": None, "near": config.dedup.near}
    if not config.dedup.near:
        return staged, stats
    stats.update({"similarity": config.dedup.similarity, "threshold": config.dedup.similarity_threshold()})
    started = time.time()
    decisions = work / "near"
    key = pass_key(config, "dedup")
    if committed(decisions, key):
        table = pq.read_table(decisions / "near.parquet")
        duplicate_of = dict(zip(table.column("id").to_pylist(), table.column("duplicate_of").to_pylist()))
        stats.update(json.loads((decisions / "stats.json").read_text()))
    else:
        exact_dropped = {id_ for batch in keys.to_batches(columns=["id", "dedup_key"], batch_size=65536)
                         for id_, k in zip(batch.column("id").to_pylist(), batch.column("dedup_key").to_pylist())
                         if k and survivors.get(k, id_) != id_}
        found = neardedup.find_in_signatures(staged_dir, config.dedup, skip=exact_dropped)
        duplicate_of = found.duplicate_of
        decisions.mkdir(parents=True)
        pq.write_table(pa.table({"id": list(duplicate_of), "duplicate_of": list(duplicate_of.values())},
                                schema=pa.schema([("id", pa.string()), ("duplicate_of", pa.string())])),
                       decisions / "near.parquet")
        (decisions / "stats.json").write_text(json.dumps(found.stats()))
        stats.update(found.stats())
        commit(decisions, key)
    stats["cluster_seconds"] = round(time.time() - started, 2)
    return staged.map_batches(neardedup.mark_near, fn_kwargs={"duplicate_of": duplicate_of}), stats


def decontaminate(staged, config: DataConfig):
    if not config.decontamination.sets:
        return staged, {}
    index = decontam.build_index(config.decontamination)
    stats = {"sets": list(index.names), "ngram_words": index.ngram_words, "eval_ngrams": int(index.hashes.size)}
    return staged.map_batches(decontam.mark_contaminated, fn_kwargs={"index": index}), stats


def mix(decided, config: DataConfig):
    """Apply the domain weights to the kept rows; the plan needs only (domain, id) on the driver.
    Returns the mixed rows, the plan (None without weights) and its report."""
    if not config.mixing.weights:
        return decided, None, {}
    draws: dict[str, list[float]] = {}
    kept = decided.select_columns(["id", "domain", "reason"]).filter(lambda r: r["reason"] == "")
    for batch in kept.iter_batches(batch_format="pyarrow", batch_size=65536):
        for id_, domain in zip(batch.column("id").to_pylist(), batch.column("domain").to_pylist()):
            draws.setdefault(domain, []).append(mixing.draw(config.mixing.seed, id_))
    plan = mixing.plan(draws, config.mixing)
    counts = {d: len(v) for d, v in draws.items()}
    after = {d: plan.whole.get(d, 1) * n + (sum(x < plan.cutoff[d] for x in draws[d]) if d in plan.cutoff else 0)
             for d, n in counts.items()}
    return decided.map_batches(mixing.apply, fn_kwargs={"mix": plan}), plan, mixing.report(counts, plan, after)


def prepare(config: DataConfig, output: Path, progress=print) -> dict:
    """Run the data stage into `output`; returns its metrics. A killed run resumes from `output/_work`."""
    import ray.data

    started = time.time()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same input → same shards, run after run
    ctx.enable_progress_bars = False

    work = output / "_work"
    classifier, classifier_stats = None, {}
    if config.filters.classifier is not None:  # trained first: a bad example file fails before any work
        classifier, classifier_stats = quality_classifier.prepare(config.filters.classifier, output, progress)
    staged_dir = work / "staged"
    key = pass_key(config)
    if committed(staged_dir, key):
        progress("data: reusing the committed staged pass")
    else:
        staged = read_inputs(config).map_batches(clean, fn_kwargs={"config": config, "classifier": classifier,
                                                                   "boilerplate": frequent_lines(config)})
        if config.dedup.near:  # MinHash signatures in the same pass: no second read of the texts
            staged = staged.map_batches(neardedup.sign, fn_kwargs={"config": config.dedup}, batch_size=256)
        staged.write_parquet(str(staged_dir))
        commit(staged_dir, key)
    staged, dedup_stats = deduplicate(staged_dir, config, work)
    staged, decontam_stats = decontaminate(staged, config)
    # Materialized (Ray spills it to disk when its object store fills): the plan, the report and both
    # writes read it. A parquet copy instead would cost each of them a read_parquet, seconds of fixed
    # overhead apiece in Ray 2.60.
    decided = staged.drop_columns(["dedup_key"]).materialize()
    mixed, plan, mixing_stats = mix(decided, config)
    report = _report(decided, plan)  # also counts the rows and bytes mixing will keep
    kept_rows = report.pop("kept_after_mixing")
    kept_bytes = report.pop("kept_bytes_after_mixing")

    for folder in ("data", "dropped"):  # a killed attempt may have left part of them
        shutil.rmtree(output / folder, ignore_errors=True)
    kept = mixed.filter(lambda r: r["reason"] == "").select_columns(["id", "text", "domain"])
    kept.repartition(max(1, -(-kept_rows // config.rows_per_shard))).write_parquet(str(output / "data"))
    mixed.filter(lambda r: r["reason"] != "").write_parquet(str(output / "dropped"))

    report["seconds"] = round(time.time() - started, 2)
    report["docs_per_s"] = round(report["read"] / max(report["seconds"], 1e-9), 1)
    report["cleaning"] = cleaning_stats(staged_dir)
    dedup_stats["exact_duplicates"] = report["dropped_by_reason"].get("dup_exact", 0)
    report["dedup"] = dedup_stats
    if decontam_stats:
        report["decontamination"] = decontam_stats
    if mixing_stats:
        report["mixing"] = mixing_stats
        mixing_stats.update({"documents_after": kept_rows, "bytes_after": kept_bytes})
    if classifier_stats:
        report["quality_classifier"] = classifier_stats
    shutil.rmtree(work)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.md").write_text(_report_markdown(report) + _dedup_markdown(report))
    progress(f"data: kept {report['kept']:,} of {report['read']:,} documents "
             f"({report['kept_bytes'] / 1e6:.1f} MB); dropped {report['dropped_by_reason']}"
             + (f"; {kept_rows:,} after mixing" if mixing_stats else ""))
    return {"documents": kept_rows, "bytes": kept_bytes, "dropped": report["read"] - report["kept"],
            "docs_per_s": report["docs_per_s"]}


def _dedup_markdown(report: dict) -> str:
    """The dedup, decontamination and mixing sections of report.md."""
    dedup = report.get("dedup", {})
    lines = ["", "## Dedup", "", f"Exact duplicates dropped: {dedup.get('exact_duplicates', 0):,}."]
    if dedup.get("near"):
        lines.append(f"MinHash-LSH: {dedup['candidate_pairs']:,} candidate pairs, {dedup['verified_pairs']:,} verified "
                     f"({dedup['similarity']} ≥ {dedup['threshold']}); {dedup['near_duplicates']:,} near duplicates "
                     f"dropped from {dedup['near_clusters']:,} clusters (survivor: the smallest id).")
    if "decontamination" in report:
        d = report["decontamination"]
        lines += ["", "## Decontamination", "", f"{d['ngram_words']}-word n-grams of {', '.join(d['sets'])} "
                  f"({d['eval_ngrams']:,} n-grams); drops are under `decontam:<set>` above."]
    if "mixing" in report:
        m = report["mixing"]
        lines += ["", "## Mixing", "", f"Seed {m['seed']}; {m['documents_after']:,} documents "
                  f"({m['bytes_after'] / 1e6:.2f} MB) after mixing.", "",
                  "| domain | before | after | factor |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {d['before']:,} | {d['after']:,} | {d['factor']} |" for name, d in m["domains"].items()]
    return "\n".join(lines) + "\n"


EXAMPLES_PER_RULE = 3


def _report(decided, plan: mixing.MixPlan | None = None) -> dict:
    """Counts per rule, examples, sizes per domain, and the rows and bytes left after mixing by
    `plan` (every row's copies): streamed over the decided rows a batch at a time (only the columns
    it needs), so memory does not grow with the corpus. The caller adds the time."""
    dropped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    per_domain: dict[str, dict[str, int]] = {}
    read = kept = kept_bytes = mixed_rows = mixed_bytes = 0
    columns = decided.select_columns(["reason", "domain", "text", "id"])
    for batch in columns.iter_batches(batch_format="pyarrow", batch_size=4096):
        reasons = batch.column("reason").to_pylist()
        read += len(reasons)
        domains = batch.column("domain").to_pylist()
        texts = batch.column("text")
        for i, (reason, domain) in enumerate(zip(reasons, domains)):
            if not reason:
                size = len(texts[i].as_py().encode())
                kept += 1
                kept_bytes += size
                totals = per_domain.setdefault(domain, {"documents": 0, "bytes": 0})
                totals["documents"] += 1
                totals["bytes"] += size
                copies = plan.copies(domain, batch.column("id")[i].as_py()) if plan else 1
                mixed_rows += copies
                mixed_bytes += copies * size
                continue
            rule = reason.split(":", 1)[0] if reason.startswith("corrupt") else reason
            dropped[rule] = dropped.get(rule, 0) + 1
            shown = examples.setdefault(rule, [])
            if len(shown) < EXAMPLES_PER_RULE:
                id_ = batch.column("id")[i].as_py()
                shown.append(f"{id_}: {reason if rule == 'corrupt' else texts[i].as_py()[:120]!r}")
    return {
        "read": read, "kept": kept, "kept_bytes": kept_bytes, "dropped_by_reason": dict(sorted(dropped.items())),
        "examples": examples, "domains": per_domain, "kept_after_mixing": mixed_rows,
        "kept_bytes_after_mixing": mixed_bytes,
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
    if "cleaning" in report:
        c = report["cleaning"]
        lines += ["", f"Boilerplate lines removed: {c['boilerplate_lines']:,}. PII replaced in kept text: "
                  f"{c['pii_email']:,} e-mail addresses, {c['pii_ip']:,} IP addresses, "
                  f"{c['pii_phone']:,} phone numbers."]
    if "quality_classifier" in report:
        q = report["quality_classifier"]
        lines += ["", f"Quality classifier: trained on {q['trained_on']:,} of {q['positives']:,} positive and "
                  f"{q['negatives']:,} negative examples, accuracy {q['held_out_accuracy']:.3f} on the "
                  f"{q['held_out']:,} held out; documents scored under {q['threshold']} are `quality_classifier` "
                  f"above (model: `{q['model']}`)."]
    return "\n".join(lines) + "\n"
