"""Encode prepared data with the run's tokenizer and pack it into fixed-length token shards.

    python -m jobs.tokenize --run demo --set seq_len=512
Writes tokens/{train,val}/ (uint16 or uint32 shards and an index), split by document.
"""

import sys

from solo.cli.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("tokenize", __doc__, data_from="prepare_data"))
