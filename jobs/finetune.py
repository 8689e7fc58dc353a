"""Instruction-tune a model (SFT): conversations through the chat template, loss on assistant tokens only.

CPU:
    python -m jobs.finetune --run demo
    python -m jobs.finetune --model ~/.solo/runs/demo/pretrain/model --data chats.jsonl --output /tmp/sft
GPU:
    python -m jobs.finetune --run demo --set device=cuda --set workers=1 --set strategy.precision=bf16
`--data` is a jsonl of {"messages": [...]} (OpenAI style); default: pairs from the embedded corpus.
"""

import sys

from solo.entry import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("finetune", __doc__, model_from="pretrain"))
