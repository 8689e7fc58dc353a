"""The tokenizer stage: a byte-level BPE, with solo's chat template, trained on prepared data or raw files.

Config: configs/tokenizer/default.yaml. The same on a CPU or GPU machine (it runs on one core):
    python -m jobs.tokenizer --run demo --set vocab_size=8000
    python -m jobs.tokenizer --data ~/.solo/runs/demo/data --output /tmp/tok
    python -m jobs.tokenizer --input notes/ --input web.jsonl.gz --output /tmp/tok --set vocab_size=32000
Tiny: python -m jobs.tokenizer --input README.md --output /tmp/tok --set vocab_size=300

Writes a Hugging Face tokenizer folder that AutoTokenizer loads, and report.json + report.md: bytes
per token and tokens per word on held-out documents, per domain (with --input, per input), beside
Hugging Face's plain byte-level BPE of the same size trained on the same sample.
(`python -m jobs.train_tokenizer`, this job's earlier name, still runs it.)
"""

import sys

from solo.cli.jobs import stage_job


def main(argv: list[str] | None = None) -> int:
    return stage_job("tokenizer", __doc__, argv, data_from="data")


if __name__ == "__main__":
    sys.exit(main())
