"""The pretrain stage: a Llama model from scratch with Ray Train and DeepSpeed (or the layer-streaming engine).

Config: configs/pretrain/default.yaml (the demo model, Muon + WSD, the strategy the planner picks),
configs/pretrain/shakespeare-cpu.yaml (tinyshakespeare in two CPU minutes), configs/pretrain/nvme-cpu.yaml.
CPU (gloo, DS_ACCELERATOR=cpu, 2 workers):
    python -m jobs.pretrain --run demo --set max_steps=100
    python -m jobs.pretrain --run demo --set max_minutes=30           # a time budget: stops annealed at 30 min
    python -m jobs.pretrain --run demo --config configs/pretrain/shakespeare-cpu.yaml --set max_minutes=2
GPU (one worker per GPU; strategy: auto plans bf16 and what fits, `solo plan` shows why):
    python -m jobs.pretrain --run demo --set device=cuda --set workers=1 --set model=125m --set max_minutes=240
Layer streaming (weights and Adam in host memory, one layer at a time on the device; README, `engine: stream`;
AdamW, since Muon keeps its state beside the weights):
    python -m jobs.pretrain --run demo --set engine=stream --set optim.name=adamw --set max_steps=100
    python -m jobs.pretrain --run demo --set engine=stream --set optim.name=adamw --set device=cuda \
        --set workers=1 --set model=1.3b --set strategy.precision=bf16
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
