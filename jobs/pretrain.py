"""The pretrain stage: a Llama model from scratch with Ray Train and DeepSpeed (or the layer-streaming engine).

Config: configs/pretrain/default.yaml (the demo model, Muon + WSD, the strategy the planner picks),
configs/pretrain/shakespeare-cpu.yaml (tinyshakespeare in two CPU minutes), configs/pretrain/nvme-cpu.yaml;
for one 24 GB GPU, configs/pretrain/{125m,350m,1.3b,2.7b,7b}-gpu.yaml (a 32k vocabulary, rows of 1,024 or 2,048
tokens, 65,536 to 131,072 tokens a step; docs/training.md#a-gpu).
CPU (gloo, DS_ACCELERATOR=cpu, 2 workers):
    python -m jobs.pretrain --run demo --set max_steps=100
    python -m jobs.pretrain --run demo --set max_minutes=30           # a time budget: stops annealed at 30 min
    python -m jobs.pretrain --run demo --config configs/pretrain/shakespeare-cpu.yaml --set max_minutes=2
GPU (one worker per GPU; strategy: auto plans bf16 and what fits, `solo plan --config FILE` shows why; the loop
compiled, a chunked cross-entropy, prefetched inputs, fused AdamW: `loop:`):
    python -m jobs.tokenizer --run web --input DATA --set vocab_size=32000
    python -m jobs.tokenize --run web --set seq_len=1024
    python -m jobs.pretrain --run web --config configs/pretrain/125m-gpu.yaml --set max_minutes=240
    python -m jobs.pretrain --run web2k --config configs/pretrain/2.7b-gpu.yaml     # rows of 2,048: tokenize again
    solo plan --config configs/pretrain/350m-gpu.yaml --gpu-mem 24 --host-mem 64
Layer streaming (weights and Adam in host memory, one layer at a time on the device; README, `engine: stream`;
AdamW, since Muon keeps its state beside the weights):
    python -m jobs.pretrain --run demo --set engine=stream --set optim.name=adamw --set max_steps=100
    python -m jobs.pretrain --run demo --set engine=stream --set optim.name=adamw --set device=cuda \
        --set workers=1 --set model=1.3b --set strategy.precision=bf16
Without Ray, the same loop under the deepspeed launcher (one process per GPU, or per CPU rank with gloo;
`workers` must equal the process count; checkpoints in pretrain.partial/checkpoints/):
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module jobs.pretrain --run demo --set max_steps=100
    deepspeed --num_gpus 1 --module jobs.pretrain --run web --config configs/pretrain/125m-gpu.yaml
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
