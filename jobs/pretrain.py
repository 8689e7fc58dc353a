"""The pretrain stage: a Llama model from scratch with Ray Train and DeepSpeed (or the layer-streaming engine).

Config: configs/pretrain/default.yaml (the demo model, ZeRO-3 with offload to host memory),
configs/pretrain/shakespeare-cpu.yaml (ZeRO-0, nothing offloaded), configs/pretrain/nvme-cpu.yaml.
CPU (gloo, DS_ACCELERATOR=cpu, 2 workers):
    python -m jobs.pretrain --run demo --set max_steps=100
    python -m jobs.pretrain --run demo --config configs/pretrain/shakespeare-cpu.yaml --set max_steps=50
GPU (one worker per GPU):
    python -m jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=125m --set strategy.precision=bf16
    python -m jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=1.3b --set strategy=auto
        (strategy: auto: the planner picks the fastest strategy that fits this machine; `solo plan` shows why)
Layer streaming (weights and Adam in host memory, one layer at a time on the device; README, `engine: stream`):
    python -m jobs.pretrain --run demo --set engine=stream --set max_steps=100
    python -m jobs.pretrain --run demo --set engine=stream --set device=cuda --set workers=1 --set model=1.3b \
        --set strategy.precision=bf16
Without Ray, the same loop under the deepspeed launcher (one process per GPU, or per CPU rank with gloo;
`workers` must equal the process count; checkpoints in pretrain.partial/checkpoints/):
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module jobs.pretrain --run demo --set max_steps=100
    deepspeed --num_gpus 1 --module jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=125m \
        --set strategy.precision=bf16
Reads the run's tokenize/ (or --data DIR); writes pretrain/ with model/, metrics.csv and TensorBoard logs.
A killed run resumes from its last checkpoint when submitted again, on another worker count too (through
DeepSpeed's universal checkpoint).
"""

import sys

from solo.cli.jobs import stage_job


def main(argv: list[str] | None = None) -> int:
    return stage_job("pretrain", __doc__, argv, data_from="tokenize")


if __name__ == "__main__":
    sys.exit(main())
