"""Data stage memory: peak RSS of `jobs.prepare_data` on a corpus and on the same corpus ten times over.

    .venv/bin/python -m benchmarks.data_memory [--copies 10]

The corpus is the real web text in ../shared/data/webtext (the Dolma Common Crawl shard, the
first 1,000 C4 pages, 300 FineWeb pages) as one jsonl; the big one repeats every page `--copies`
times under new ids (the copies are exact duplicates, so the dedup, the report and the boilerplate
count all see ten times the rows). Each run is `python -m jobs.prepare_data --input … --output …`
on a private local Ray (2 CPUs), with every process of its tree (the driver, the raylet, the GCS,
the Ray Data workers) sampled with psutil every 0.2 s: the peak of their summed RSS and the
driver's own peak. Goal: the peak does not grow with the corpus (ratio near 1, far from 10).
Writes benchmarks/results/data_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.record import DATA as SHARED_DATA
from benchmarks.record import Conditions, ran_on, record
from solo.config import REPO_ROOT

DATA = SHARED_DATA / "webtext"


def pages() -> list[dict]:
    rows = []
    with gzip.open(next(DATA.glob("dolma_cc_CC-*.jsonl.gz")), "rt") as f:
        rows += [{"id": f"cc-{i}", "text": json.loads(line)["text"]} for i, line in enumerate(f)]
    with open(DATA / "c4_en_train_first1000.jsonl") as f:
        rows += [{"id": f"c4-{i}", "text": json.loads(line)["text"]} for i, line in enumerate(f)]
    rows += [{"id": f"fineweb-{i}", "text": r["text"]} for i, r in enumerate(json.loads((DATA / "fineweb_first300.json")
                                                                                       .read_text()))]
    return rows


def write_corpus(path: Path, rows: list[dict], copies: int) -> None:
    with open(path, "w") as f:
        for copy in range(copies):
            for row in rows:
                f.write(json.dumps({"id": f"{row['id']}-copy{copy}", "text": row["text"]}) + "\n")


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(summed RSS of the process and all its descendants, the process's own RSS)."""
    total = own = 0
    try:
        own = root.memory_info().rss
        total = own
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total, own


def measure(corpus: Path, output: Path, home: Path) -> dict:
    env = {**os.environ, "SOLO_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)  # a private local Ray, never a cluster someone else started
    started = time.time()
    job = subprocess.Popen([sys.executable, "-m", "jobs.prepare_data", "--input", str(corpus), "--output", str(output)],
                           cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(job.pid)
    peak_total = peak_driver = 0
    while job.poll() is None:
        total, own = tree_rss(root)
        peak_total, peak_driver = max(peak_total, total), max(peak_driver, own)
        time.sleep(0.2)
    log = job.stdout.read()
    if job.returncode != 0:
        raise SystemExit(f"prepare_data failed ({job.returncode}):\n{log[-3000:]}")
    report = json.loads((output / "report.json").read_text())
    return {"documents": report["read"], "kept": report["kept"], "seconds": round(time.time() - started, 1),
            "peak_tree_mb": round(peak_total / 2**20), "peak_driver_mb": round(peak_driver / 2**20),
            "input_mb": round(corpus.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()

    rows = pages()
    conditions = Conditions()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="solo-data-memory-") as tmp:
        work = Path(tmp)
        for name, copies in (("x1", 1), (f"x{args.copies}", args.copies)):
            corpus = work / f"corpus-{name}.jsonl"
            write_corpus(corpus, rows, copies)
            runs[name] = measure(corpus, work / f"out-{name}", work / f"home-{name}")
            print(f"{name}: {runs[name]}")
    small, big = runs["x1"], runs[f"x{args.copies}"]
    result = {
        **conditions.end(),
        "copies": args.copies, "runs": runs,
        "peak_tree_ratio": round(big["peak_tree_mb"] / small["peak_tree_mb"], 2),
        "peak_driver_ratio": round(big["peak_driver_mb"] / small["peak_driver_mb"], 2),
        "goal": "peak memory does not grow with the corpus",
    }
    print(f"peak RSS x{args.copies}/x1: process tree {result['peak_tree_ratio']}, driver {result['peak_driver_ratio']}")
    record("data_memory", result, markdown(result))


def markdown(r: dict) -> str:
    lines = [
        "# Data stage memory: one corpus, and the same corpus ten times over", "",
        ran_on(r), "",
        "`python -m jobs.prepare_data --input corpus.jsonl --output …` with the default data config (every filter, "
        "PII, boilerplate, exact and near dedup) on a private local Ray; the RSS of every process of the job's tree "
        "(driver, raylet, GCS, Ray Data workers) summed and sampled every 0.2 s.", "",
        "| corpus | documents | input MB | kept | seconds | peak RSS, all processes (MB) | peak RSS, driver (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in r["runs"].items():
        lines.append(f"| {name} | {run['documents']:,} | {run['input_mb']} | {run['kept']:,} | {run['seconds']} | "
                     f"{run['peak_tree_mb']:,} | {run['peak_driver_mb']:,} |")
    lines += ["",
              f"Ten times the corpus: peak RSS ×{r['peak_tree_ratio']} over all processes, ×{r['peak_driver_ratio']} "
              "for the driver (goal: no growth with the corpus; ×10 would be memory proportional to it).", "",
              "The copies are exact duplicates of the first corpus (hence the same `kept`). The cleaning, the "
              "boilerplate count (a Ray Data groupby) and the report stream; the dedup keeps small per-document keys "
              "on the driver (about 50 bytes a document), the one part that grows with the rows. Summed RSS counts "
              "the pages of Ray's shared object store once per process that maps them, so it overstates the total."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
