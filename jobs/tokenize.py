"""The tokenize stage: prepared data encoded with the run's tokenizer and packed into fixed-length rows.

Config: configs/tokenize/default.yaml. Ray Data spreads it over every core, on a CPU or GPU machine:
    python -m jobs.tokenize --run demo --set seq_len=512
    python -m jobs.tokenize --run demo --data /tmp/clean/data --set seq_len=2048
Writes the run's tokenize/{train,val}/ (uint16 or uint32 shards and an index), split by document.
"""

import sys

from solo.cli.jobs import stage_job


def main(argv: list[str] | None = None) -> int:
    return stage_job("tokenize", __doc__, argv, data_from="data")


if __name__ == "__main__":
    sys.exit(main())
