"""Clean raw text into parquet: normalize, filter, exact and MinHash near dedup over the whole
corpus, eval decontamination, domain mixing. A killed run, run again, resumes where it stopped.

CPU or GPU machine alike (Ray Data on CPUs):
    python -m jobs.prepare_data --input ~/notes --input corpus.jsonl --run mine
    python -m jobs.prepare_data --input ../shared/data/webtext --set dedup.threshold=0.9 --output /tmp/clean
    python -m jobs.prepare_data --config configs/data/dedup-only.yaml --input corpus.jsonl --output /tmp/dedup
    python -m jobs.prepare_data --input corpus.jsonl --output /tmp/clean \
        --set 'filters.classifier={positives: good.jsonl, negatives: spam.jsonl, threshold: 0.5}'
Writes data/ (parquet), dropped/ (what each rule dropped, and why), report.json and report.md
(and quality_classifier.npz, the trained model, when filters.classifier is set).
"""

import sys

from solo.cli.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("prepare_data", __doc__))
