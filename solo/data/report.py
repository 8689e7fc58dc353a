"""The data stage's report: what was read, kept and dropped (by which rule, with examples), per domain,
and what dedup, decontamination and mixing did; as report.json and report.md."""

from __future__ import annotations

from solo.data import mixing
from solo.data.files import CORRUPT_FILE

EXAMPLES_PER_RULE = 3


def summarize(decided, plan: mixing.MixPlan | None = None) -> dict:
    """Counts per rule, examples, sizes per domain, and the rows and bytes left after mixing by
    `plan` (every row's copies): streamed over the decided rows a batch at a time (only the columns
    it needs), so memory does not grow with the corpus. The caller adds the time."""
    dropped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    per_domain: dict[str, dict[str, int]] = {}
    damaged: list[dict[str, str]] = []
    read = kept = kept_bytes = mixed_rows = mixed_bytes = 0
    columns = decided.select_columns(["reason", "domain", "text", "id", "source"])
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
            if reason == CORRUPT_FILE:  # a file, not a document: its path, and what was wrong with it
                damaged.append({"path": batch.column("source")[i].as_py(), "problem": texts[i].as_py()})
                rule = reason
            else:
                rule = reason.split(":", 1)[0] if reason.startswith("corrupt") else reason
            dropped[rule] = dropped.get(rule, 0) + 1
            shown = examples.setdefault(rule, [])
            if len(shown) < EXAMPLES_PER_RULE:
                id_ = batch.column("id")[i].as_py()
                shown.append(f"{batch.column('source')[i].as_py()}: {texts[i].as_py()}" if reason == CORRUPT_FILE
                             else f"{id_}: {reason if rule == 'corrupt' else texts[i].as_py()[:120]!r}")
    return {
        "read": read, "kept": kept, "kept_bytes": kept_bytes, "dropped_by_reason": dict(sorted(dropped.items())),
        "examples": examples, "domains": per_domain, "damaged_files": sorted(damaged, key=lambda d: d["path"]),
        "kept_after_mixing": mixed_rows, "kept_bytes_after_mixing": mixed_bytes,
    }


def report_markdown(report: dict) -> str:
    lines = ["# Data report", "", f"Read {report['read']:,} documents, kept {report['kept']:,} "
             f"({report['kept_bytes'] / 1e6:.2f} MB) in {report['seconds']} s ({report['docs_per_s']} docs/s).", "",
             "| rule | dropped | examples |", "| --- | ---: | --- |"]
    for rule, count in sorted(report["dropped_by_reason"].items()):
        shown = "<br>".join(e.replace("|", "\\|").replace("\n", " ") for e in report["examples"].get(rule, []))
        lines.append(f"| {rule} | {count:,} | {shown} |")
    if report.get("damaged_files"):
        lines += ["", f"Damaged files ({len(report['damaged_files'])}): the records before the damage were read "
                  "like any others.", "", "| file | problem |", "| --- | --- |"]
        lines += [f"| `{d['path']}` | {d['problem']} |" for d in report["damaged_files"]]
    if report.get("duplicate_ids"):
        lines += ["", f"Ids that repeated: {report['duplicate_ids']:,}; each repeat after the first was renamed "
                  "`<id>~<n>`, so that mixing and the train/validation split see distinct documents."]
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


def dedup_markdown(report: dict) -> str:
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
