"""The data stage: raw text into clean parquet. Normalize, filter, exact and MinHash near dedup over the
whole corpus, eval decontamination, domain mixing; a killed run, run again, resumes where it stopped.

Config: configs/data/default.yaml (every filter on), configs/data/dedup-only.yaml (dedup alone).
CPU or GPU machine alike (Ray Data on the CPUs):
    python -m jobs.data --input ~/notes --input corpus.jsonl --run mine
    python -m jobs.data --input ../shared/data/webtext --set dedup.threshold=0.9 --output /tmp/clean
    python -m jobs.data --config configs/data/dedup-only.yaml --input corpus.jsonl --output /tmp/dedup
    python -m jobs.data --input fineweb-000.jsonl.zst --input ~/datasets/c4 --run web     (c4: Dataset.save_to_disk)
    python -m jobs.data --set 'inputs=[{path: ~/datasets/wiki, split: train, text_field: body}]' --run wiki
    python -m jobs.data --input hf://datasets/HuggingFaceFW/fineweb/sample/10BT --run web  (needs the network)
    python -m jobs.data --input corpus.jsonl --output /tmp/clean \
        --set 'filters.classifier={positives: good.jsonl, negatives: spam.jsonl, threshold: 0.5}'
Tiny, on the embedded corpus (this Python's docs): python -m jobs.data --set inputs='[{path: embedded,
max_documents: 200}]' --output /tmp/tiny
Writes data/ (parquet), dropped/ (what each rule dropped, and why), report.json and report.md (and
quality_classifier.npz, the trained model, when filters.classifier is set) into the run's data/.
(`python -m jobs.prepare_data`, this job's earlier name, still runs it.)
"""

import sys

from solo.cli.jobs import stage_job


def main(argv: list[str] | None = None) -> int:
    return stage_job("data", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
