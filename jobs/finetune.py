"""The finetune stage: full SFT, LoRA or QLoRA on conversations, loss on assistant tokens only.

Config: configs/finetune/default.yaml (full SFT), configs/finetune/qlora-cpu.yaml (QLoRA).
CPU (QLoRA: 4-bit NF4 base, LoRA adapters; a few minutes on two cores with the demo model):
    python -m jobs.finetune --config configs/finetune/qlora-cpu.yaml --model ~/.solo/runs/default/pretrain/model \
        --data ../shared/data/alpaca/alpaca_5000.json
    python -m jobs.finetune --run demo                       # full SFT of the run's pretrained model
    python -m jobs.finetune --run demo --set method=lora --set lora.rank=8
GPU (one worker per GPU; QLoRA computes in bf16 there by itself, its adapters stay fp32):
    python -m jobs.finetune --config configs/finetune/qlora-cpu.yaml --model PATH --data chats.jsonl \
        --set device=cuda --set workers=1
    python -m jobs.finetune --run web --set device=cuda --set workers=1     # full SFT: strategy auto plans bf16 and
                                                                           # what fits, as for pretraining
The pretraining recipes for one GPU are configs/pretrain/{125m,350m,1.3b,2.7b,7b}-gpu.yaml (`python -m
jobs.pretrain --help`).

`--data` holds conversations: a jsonl file (`.gz`, `.zst` too), a JSON list, parquet, arrow, a folder of them, a
folder written by save_to_disk (`--set split=train` picks a DatasetDict's split) or hf://datasets/OWNER/NAME;
OpenAI `messages` (tool calls and tool results too), Alpaca (`instruction`, `input`, `output`) or ShareGPT
(`conversations: [{from, value}]`) records, told apart per record (`--set format=...` to insist on one);
malformed records are counted by reason in rows/report.json and skipped. Default data: pairs from the embedded
corpus. `--model` is a Hugging Face folder of any causal LM family (its tokenizer and chat template come with
it; the loss falls on the assistant turns that template renders, or on every token with `--set loss_on=all`);
default: the run's pretrain/.
Writes the run's finetune/ (or --output): rows/, metrics.csv, model/ (full SFT, or the merged adapters with
`merge: true`) and adapter/ (peft format, also registered as $SOLO_HOME/adapters/<adapter_name or run>/).
A killed run resumes from its last checkpoint when submitted again.
"""

import sys

from solo.cli.jobs import stage_job


def main(argv: list[str] | None = None) -> int:
    return stage_job("finetune", __doc__, argv, model_from="pretrain")


if __name__ == "__main__":
    sys.exit(main())
