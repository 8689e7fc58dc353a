"""Fine-tuning memory: full SFT, LoRA and QLoRA on the same model and batch, side by side.

    .venv/bin/python -m benchmarks.finetune_memory [--preset 125m] [--steps 2] [--micro-batch 4] [--seq-len 256]
                                                   [--activation-checkpointing] [--device cuda]

Each method runs solo's own training loop (`solo.train.loop.train_worker`: DeepSpeed on a one-process
gloo group, or NCCL on a GPU) in a subprocess of its own, so one method's peak cannot hide in
another's: an untrained Llama of the preset, Alpaca conversations packed into rows, the same
micro-batch and steps. SFT runs at ZeRO-3 with the optimizer and the parameters offloaded to CPU (the
memory-lean strategy; on a CPU-only machine that is all host memory); LoRA and QLoRA put rank-16
adapters on every projection, QLoRA over a 4-bit NF4 base with double quantization. Peak is the
process's peak RSS on CPU, CUDA max allocated on a GPU. Goal: QLoRA at most half of SFT's peak.
Writes benchmarks/results/finetune_memory.json and .md (with `_checkpointed` in the name under
--activation-checkpointing, which all three methods then use; `_mb<N>` for another micro-batch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import DATA, Conditions, ran_on, record

METHODS = ("sft", "lora", "qlora")


def current_rss_gb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**3


def make_model(folder: Path, preset: str, seq_len: int) -> None:
    """An untrained Llama of the preset and a BPE tokenizer (with solo's chat template) trained on the
    embedded corpus."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from solo.data import corpus
    from solo.tokens.tokenizer import stop_token_ids
    from solo.tokens.train_bpe import train_bpe
    from solo.train.presets import llama_config

    tok = train_bpe((d["text"] for d in corpus.documents(max_documents=2000)), vocab_size=8192, min_frequency=2)
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(preset, vocab_size=len(tok), seq_len=seq_len,
                                  eos_token_id=stop_token_ids(tok))).save_pretrained(folder)
    tok.save_pretrained(folder)
    GenerationConfig(eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id).save_pretrained(folder)


def config_for(method: str, args):
    from solo.config import load_config
    from solo.train.config import FinetuneConfig

    return load_config(FinetuneConfig, None, [
        f"method={method}", f"data={DATA / 'alpaca' / 'alpaca_5000.json'}", "max_examples=400",
        f"seq_len={args.seq_len}", "workers=1", f"micro_batch={args.micro_batch}", f"global_batch={args.micro_batch}",
        f"max_steps={args.steps}", f"checkpoint_every={args.steps}", f"log_every={args.steps}", "merge=false",
        f"device={args.device}", "strategy.zero_stage=3", "strategy.offload_optimizer=cpu",
        "strategy.offload_params=cpu", f"strategy.activation_checkpointing={args.activation_checkpointing}"])


def measure(method: str, args) -> dict:
    """One method in this process (the child): train, then report peak memory and time."""
    from solo.runtime import join_one_process_group, worker_env

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    import torch

    from solo.tokens.tokenizer import load
    from solo.train.checkpoints import CheckpointSink
    from solo.train.job import TrainJob
    from solo.train.loop import train_worker
    from solo.train.sft import build_sft_rows

    cuda = args.device == "cuda"
    join_one_process_group(cuda)
    config = config_for(method, args)
    work = Path(args.work)
    rows = work / "rows"
    if not (rows / "train" / "index.json").is_file():
        build_sft_rows(load(work / "model"), config, rows, val_fraction=0.01)
    output = work / method
    output.mkdir(exist_ok=True)
    before_gb = current_rss_gb()
    started = time.perf_counter()
    metrics = train_worker(TrainJob(config=config, train_dir=str(rows / "train"), val_dir=None,
                                    tokenizer_dir=str(work / "model"), output_dir=str(output),
                                    init_model_dir=str(work / "model")), CheckpointSink())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result = {"method": method, "peak_rss_gb": round(peak_gb, 3), "rss_before_model_gb": round(before_gb, 3),
              "seconds": round(time.perf_counter() - started, 1), "loss": metrics.get("loss"),
              "tokens_per_s": metrics.get("tokens_per_s")}
    if cuda:
        result["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (all three methods)")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args)), flush=True)
        return

    conditions = Conditions()
    with tempfile.TemporaryDirectory(prefix="solo-ft-memory-") as work:
        make_model(Path(work) / "model", args.preset, args.seq_len)
        from transformers import AutoConfig

        from solo.train.presets import parameter_count

        parameters = parameter_count(AutoConfig.from_pretrained(Path(work) / "model"))
        runs = {}
        for method in METHODS:
            child = subprocess.run([sys.executable, "-m", "benchmarks.finetune_memory", "--one", method,
                                    "--work", work, "--preset", args.preset, "--steps", str(args.steps),
                                    "--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len),
                                    "--device", args.device]
                                   + (["--activation-checkpointing"] if args.activation_checkpointing else []),
                                   capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            line = next((out for out in child.stdout.splitlines() if out.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{method} failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
            runs[method] = json.loads(line[len("RESULT "):])
            print(f"{method}: {runs[method]}", flush=True)
    key = "gpu_peak_gb" if args.device == "cuda" else "peak_rss_gb"
    result = {
        **conditions.end(),
        "preset": args.preset, "parameters": parameters, "steps": args.steps, "micro_batch": args.micro_batch,
        "seq_len": args.seq_len, "device": args.device, "activation_checkpointing": args.activation_checkpointing,
        "peak_key": key, "runs": runs,
        "qlora_over_sft": round(runs["qlora"][key] / runs["sft"][key], 3),
        "lora_over_sft": round(runs["lora"][key] / runs["sft"][key], 3),
        "goal": "qlora_over_sft <= 0.5",
    }
    name = ("finetune_memory" + ("_checkpointed" if args.activation_checkpointing else "")
            + (f"_mb{args.micro_batch}" if args.micro_batch != 4 else ""))
    record(name, result, markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    key = r["peak_key"]
    unit = "peak GPU memory (GB, CUDA max allocated)" if key == "gpu_peak_gb" else "peak RSS (GB)"
    lines = [
        "# Fine-tuning memory: full SFT, LoRA and QLoRA", "",
        ran_on(r) + " Load moves the seconds, not the memory.", "",
        f"The `{r['preset']}` preset, untrained ({r['parameters'] / 1e6:.1f}M parameters), {r['steps']} steps of "
        f"micro-batch {r['micro_batch']} × {r['seq_len']} tokens of packed Alpaca conversations, on {r['device']}; "
        "each method in its own process, through solo's own training loop. SFT as `method: sft` runs by default "
        "(ZeRO-3, optimizer and parameters offloaded to CPU); LoRA and QLoRA: rank 16 on every attention and MLP "
        "projection, QLoRA over a 4-bit NF4 base with double quantization, fp32 compute on CPU. Activation "
        "checkpointing " + ("on" if r.get("activation_checkpointing") else "off") + " for all three.", "",
        f"| method | {unit} | RSS before the model (GB) | seconds | ratio to SFT |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method, run in r["runs"].items():
        lines.append(f"| {method} | {run[key]:.3f} | {run['rss_before_model_gb']:.3f} | {run['seconds']} | "
                     f"{run[key] / r['runs']['sft'][key]:.3f} |")
    lines += ["", f"QLoRA / SFT: **{r['qlora_over_sft']}** (goal ≤ 0.5); LoRA / SFT: {r['lora_over_sft']}.", "",
              "RSS includes what every process holds before any model exists (Python, torch, DeepSpeed; the "
              "second column), so the ratios understate the saving on the model itself.", "",
              "Reading it: SFT holds fp32 weights, gradients and AdamW state for every parameter plus ZeRO-3's "
              "offload buffers; LoRA drops the gradients and optimizer state of the frozen base; QLoRA also "
              "stores the base's projections in 4 bits (embeddings and norms stay fp32). What all three share "
              "is the activations of the batch, which at a small model and a CPU's fp32 dominate what is left "
              "once the optimizer state is gone: there the 4-bit base saves little beyond LoRA, and on CPU "
              "bitsandbytes dequantizes each weight to fp32 for every matmul, forward and backward. The base's "
              "share, and with it QLoRA's advantage, grows with the model: the issue's GPU case (7B, "
              "micro-batch 1) is where it is meant to show.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
