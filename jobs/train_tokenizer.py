"""Train a byte-level BPE tokenizer, with solo's chat template, on prepared data or raw files.

    python -m jobs.train_tokenizer --run demo --set vocab_size=8000
    python -m jobs.train_tokenizer --data ~/.solo/runs/demo/data --output /tmp/tok
    python -m jobs.train_tokenizer --input notes/ --input web.jsonl.gz --output /tmp/tok

Writes a Hugging Face tokenizer folder that AutoTokenizer loads, and report.json + report.md:
bytes per token and tokens per word on held-out documents, per domain (with --input, per
input), beside Hugging Face's plain byte-level BPE of the same size trained on the same sample.
"""

import sys

from solo.cli.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("tokenizer", __doc__, data_from="prepare_data"))
