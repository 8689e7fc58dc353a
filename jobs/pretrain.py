"""Pretrain a Llama model from scratch with Ray Train and DeepSpeed ZeRO-3.

CPU (gloo, DS_ACCELERATOR=cpu, 2 workers):
    python -m jobs.pretrain --run demo --set max_steps=100
GPU (one worker per GPU):
    python -m jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=125m --set strategy.precision=bf16
Reads the run's tokens/ (or --data DIR); writes pretrain/ with model/, metrics.csv and TensorBoard logs.
A killed run resumes from its last checkpoint when submitted again.
"""

import sys

from solo.entry import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("pretrain", __doc__, data_from="tokenize"))
