"""The data stage: raw text in, clean deduplicated parquet out, as a Ray Data stream.

    read → normalize → boilerplate lines → length, language and quality rules → quality
    classifier (optional) → PII scrub → exact dedup → MinHash near dedup (both over the whole
    corpus) → eval decontamination → domain mixing → data/ + dropped/

Every record that does not survive is written to `dropped/` with the rule that dropped it,
so nothing is lost silently; a corrupt record (bad JSON, invalid UTF-8, no text) is counted
and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from solo.data import boilerplate, decontam, mixing, neardedup
from solo.data import classifier as quality_classifier
from solo.data.clean import clean, cleaning_stats
from solo.data.config import DataConfig
from solo.data.files import CORRUPT_FILE, resolve_files
from solo.data.normalize import normalize
from solo.data.read import check_inputs, read_inputs
from solo.data.report import dedup_markdown, report_markdown, summarize
from solo.errors import SoloError
from solo.faults import fault_point


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


def unique_ids(staged_dir: Path, work: Path, key: str) -> tuple[Path, int]:
    """The staged pass with every id unique, and how many ids were renamed: mixing, dedup's survivors and the
    train/validation split are keyed by id, and two inputs may well both number their records from 0.
    The first record of an id, in input order, keeps it; each later one becomes `<id>~<n>`. Only the id
    column is read on the driver (Arrow, not Python objects), and a rewrite happens only when an id repeats."""
    ids = pads.dataset(str(staged_dir), format="parquet").to_table(columns=["id"]).column("id")
    counts = pc.value_counts(ids)
    repeated = set(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())
    if not repeated:
        return staged_dir, 0
    unique_dir = work / "unique"
    renamed: dict[str, str] = {}  # the source of each later record of a repeated id → its new id
    seen: dict[str, int] = {}
    for batch in pads.dataset(str(staged_dir), format="parquet").to_batches(columns=["id", "source"]):
        for id_, source in zip(batch.column("id").to_pylist(), batch.column("source").to_pylist()):
            if id_ in repeated:
                seen[id_] = seen.get(id_, 0) + 1
                if seen[id_] > 1:
                    renamed[source] = f"{id_}~{seen[id_]}"
    taken = pc.sum(pc.is_in(ids, value_set=pa.array(list(renamed.values())))).as_py() if renamed else 0
    if taken:
        raise SoloError(f"{taken} input ids already look like renamed repeats (`<id>~<n>`): rename them, or set "
                        "id_field: null to let solo number the records")
    if not committed(unique_dir, key):
        ray.data.read_parquet(str(staged_dir)).map_batches(_rename, fn_kwargs={"renamed": renamed}) \
            .write_parquet(str(unique_dir))
        commit(unique_dir, key)
    return unique_dir, len(renamed)


def _rename(batch: dict, renamed: dict[str, str]) -> dict:
    return {**batch, "id": [renamed.get(source, id_) for id_, source in zip(batch["id"], batch["source"])]}


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
    started = time.time()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same input → same shards, run after run
    ctx.enable_progress_bars = False

    check_inputs(config)  # the pipeline checked them before Ray started; a direct call is checked here
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
    fault_point("data.staged")
    staged_dir, duplicate_ids = unique_ids(staged_dir, work, key)
    staged, dedup_stats = deduplicate(staged_dir, config, work)
    staged, decontam_stats = decontaminate(staged, config)
    # Materialized (Ray spills it to disk when its object store fills): the plan, the report and both
    # writes read it. A parquet copy instead would cost each of them a read_parquet, seconds of fixed
    # overhead apiece in Ray 2.60.
    decided = staged.drop_columns(["dedup_key"]).materialize()
    mixed, plan, mixing_stats = mix(decided, config)
    report = summarize(decided, plan)  # also counts the rows and bytes mixing will keep
    kept_rows = report.pop("kept_after_mixing")
    kept_bytes = report.pop("kept_bytes_after_mixing")
    if report["read"] == report["dropped_by_reason"].get(CORRUPT_FILE, 0):
        raise SoloError("no input could be read: " + "; ".join(f"{d['path']} ({d['problem']})"
                                                              for d in report["damaged_files"]))
    report["duplicate_ids"] = duplicate_ids

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
    (output / "report.md").write_text(report_markdown(report) + dedup_markdown(report))
    progress(f"data: kept {report['kept']:,} of {report['read']:,} documents "
             f"({report['kept_bytes'] / 1e6:.1f} MB); dropped {report['dropped_by_reason']}"
             + (f"; {kept_rows:,} after mixing" if mixing_stats else ""))
    return {"documents": kept_rows, "bytes": kept_bytes, "dropped": report["read"] - report["kept"],
            "docs_per_s": report["docs_per_s"]}
