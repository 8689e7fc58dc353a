"""Pretrain a Llama model from scratch with Ray Train and DeepSpeed ZeRO-3.

CPU (gloo, DS_ACCELERATOR=cpu, 2 workers):
    python -m jobs.pretrain --run demo --set max_steps=100
GPU (one worker per GPU):
    python -m jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=125m --set strategy.precision=bf16
    python -m jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=1.3b --set strategy=auto
        (strategy: auto: the planner picks the fastest strategy that fits this machine; `solo plan` shows why)
Layer streaming (weights and Adam in host memory, one layer at a time on the device; README, `engine: stream`):
    python -m jobs.pretrain --run demo --set engine=stream --set max_steps=100
    python -m jobs.pretrain --run demo --set engine=stream --set device=cuda --set workers=1 --set model=1.3b --set strategy.precision=bf16
Without Ray, the same loop under the deepspeed launcher (one process per GPU, or per CPU rank with
gloo; `workers` must equal the process count; checkpoints in pretrain.partial/checkpoints/):
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module jobs.pretrain --run demo --set max_steps=100
    deepspeed --num_gpus 1 --module jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=125m --set strategy.precision=bf16
Reads the run's tokens/ (or --data DIR); writes pretrain/ with model/, metrics.csv and TensorBoard logs.
A killed run resumes from its last checkpoint when submitted again, on another worker count too (through
DeepSpeed's universal checkpoint).
"""

import sys

from solo.cli.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("pretrain", __doc__, data_from="tokenize"))
