"""solo's shipped GPU recipes against a tuned plain PyTorch loop on one GPU: tokens/s and MFU at 125m and 350m,
rows of 1,024 tokens, a 32k vocabulary, 64 rows (65,536 tokens) a step (issue 22).

Prepare the rows on the CPU first (the GPU machine has no network; a few seconds), then on the GPU:
    .venv/bin/python -m benchmarks.gpu_mfu_vs_plain --prepare build/gpu-bench/rows
    .venv/bin/python -m benchmarks.gpu_mfu_vs_plain --data build/gpu-bench/rows --presets 125m 350m \\
        --side-timeout 200
(benchmarks/gpu_run.sh runs it on the device machine, a preset at a time, and says how to call it.)
CPU dry run (the demo preset, rows of 128, a 2,048-token BPE, 4 + 4 steps of 8 rows, fp32, gloo; about two
minutes: it checks that both sides run end to end through the same code as on a GPU, not their speed):
    .venv/bin/python -m benchmarks.gpu_mfu_vs_plain --device cpu

The rows: tinyshakespeare, WikiText-2 and every web-text document in ../shared/data (9.7 MB), a byte-level
BPE of 32,000 tokens trained on all of it (3 s on this project's 2-core machine) and packed into rows with
solo's own tokenizer and shard code (`solo.tokens.train_bpe`, `solo.tokens.shards`): 2.5M tokens.
*solo*: the shipped recipe `configs/pretrain/<preset>-gpu.yaml` through `jobs.pretrain` under the `deepspeed`
launcher (one process, as jobs/pretrain.py's docstring runs it without Ray), `max_steps` = warm-up + timed
steps and `log_every` = timed steps, so metrics.csv's last row is exactly the timed window (its tokens/s,
MFU and device peak). *plain*: a tuned loop written here on the same rows in the same order and the same
batch (micro-batch, accumulation, clipping): stock `LlamaForCausalLM` of the same preset and (padded)
vocabulary with SDPA attention, fp32 weights under bf16 autocast, `torch.compile` of the decoder, a chunked
cross-entropy of its own that computes the head and the loss 8,192 tokens at a time and never holds the
whole batch's logits, torch's fused AdamW, the next micro-batch's rows pinned and copied without blocking
while this one computes, one host sync at the end; timed with a synchronized clock over the same steps.
Each side of each preset is a process of its own (`--side-timeout` seconds at most; one that runs out is
recorded as such). MFU = tokens/s × `solo.train.presets.flops_per_token` ÷ `solo.train.hardware.PEAK_TFLOPS`
for both. Goals: solo ≥ 0.9× plain tokens/s; MFU ≥ 40% at 350m on an H100/H200.
Writes benchmarks/results/gpu_mfu_vs_plain.{json,md} from a GPU, gpu_mfu_vs_plain_cpu.{json,md} from the
dry run; each preset as soon as it is measured (`--resume` keeps the presets a cut-short run wrote).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.record import DATA, RESULTS, Conditions, ran_on, record

ROOT = Path(__file__).resolve().parents[1]
RESULT_NAMES = {"cuda": "gpu_mfu_vs_plain", "cpu": "gpu_mfu_vs_plain_cpu"}
GOAL_RATIO, GOAL_MFU_350M = 0.9, 0.40
RUN = "gpu-mfu-vs-plain"  # the run name solo's side trains under, in a private SOLO_HOME


def texts() -> list[str]:
    """Every text of the shared data fit to pretrain on: tinyshakespeare, WikiText-2, web documents."""
    from benchmarks.gpu_muon_vs_adamw import documents

    return [(DATA / "tinyshakespeare" / "input.txt").read_text(), (DATA / "wikitext2" / "valid.txt").read_text(),
            (DATA / "wikitext2" / "test.txt").read_text(), *documents()]


def prepare(folder: Path, seq_len: int, vocab_size: int) -> dict:
    """A BPE and training rows in `folder` (tokenizer/, train/, prepared.json) from the shared texts."""
    from solo.tokens import train_bpe as bpe
    from solo.tokens.shards import ShardWriter, pack, token_dtype

    corpus = texts()
    started = time.perf_counter()
    tokenizer = bpe.train_bpe(corpus, vocab_size=vocab_size, min_frequency=2)
    bpe_s = time.perf_counter() - started
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    encoded = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    rows, _ = pack(encoded, tokenizer.eos_token_id, seq_len, token_dtype(len(tokenizer)))
    writer = ShardWriter(folder / "train", seq_len, token_dtype(len(tokenizer)), rows_per_shard=4096)
    for row in rows:
        writer.add(row)
    writer.close()
    facts = {"seq_len": seq_len, "vocab_size": len(tokenizer), "text_bytes": sum(len(t.encode()) for t in corpus),
             "tokens": sum(map(len, encoded)), "rows": len(rows), "bpe_seconds": round(bpe_s, 1),
             "seconds": round(time.perf_counter() - started, 1)}
    (folder / "prepared.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def solo_overrides(args, preset: str) -> list[str]:
    """What the benchmark sets on top of the shipped recipe: the steps and the log window, no evaluation, no
    checkpoint but the last step's; on the CPU, the dry run's tiny model and batch."""
    sets = ["workers=1", f"device={args.device}", f"max_steps={args.warmup + args.steps}", "max_minutes=null",
            f"log_every={args.steps}", f"eval_every={10**6}", f"checkpoint_every={10**6}"]
    if args.device == "cpu":
        sets += [f"model={preset}", f"seq_len={args.seq_len}", f"vocab_size={args.vocab_size}",
                 f"micro_batch={args.micro_batch}", f"global_batch={args.global_batch}"]
    return sets


def recipe(args, preset: str) -> Path:
    """The shipped recipe solo's side runs: the preset's own; the dry run's tiny model overrides the 125m one's."""
    return Path(args.config) if args.config else ROOT / "configs" / "pretrain" / \
        f"{'125m' if args.device == 'cpu' else preset}-gpu.yaml"


def solo_side(args, preset: str, work: Path) -> dict:
    """solo's recipe through `jobs.pretrain` under the deepspeed launcher; its metrics.csv's last window."""
    from solo.runtime import free_port

    home = work / "solo-home"
    tokenizer_link = home / "runs" / RUN / "tokenizer"  # where the stage looks for its upstream tokenizer
    tokenizer_link.parent.mkdir(parents=True, exist_ok=True)
    if not tokenizer_link.exists():
        tokenizer_link.symlink_to(Path(args.data).resolve() / "tokenizer")
    output = work / f"solo-{preset}"
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1",
               "--master_port", str(free_port()), "--module", "jobs.pretrain", "--run", RUN,
               "--config", str(recipe(args, preset)), "--data", str(Path(args.data).resolve()),
               "--output", str(output), *[f"--set={s}" for s in solo_overrides(args, preset)]]
    env = {**os.environ, "SOLO_HOME": str(home), "PYTHONUNBUFFERED": "1",
           **({"DS_ACCELERATOR": "cpu"} if args.device == "cpu" else {})}
    done = run_side(command, env, args.side_timeout, f"solo {preset}")
    if not done["ok"]:
        return done
    rows = list(csv.DictReader((output / "metrics.csv").open()))
    window = rows[-1]  # steps warmup+1 … warmup+steps
    return {"ok": True, "tokens_per_s": csv_number(window, "tokens_per_s"), "mfu": csv_number(window, "mfu"),
            "gpu_peak_gb": csv_number(window, "gpu_peak_gb"), "loss": csv_number(window, "loss"),
            "window_steps": int(window["step"]) - int(rows[-2]["step"]) if len(rows) > 1 else int(window["step"]),
            "plan": planned_line(done["output"])}


def csv_number(row: dict, key: str) -> float | None:
    """A metrics.csv cell; None where the loop left it blank (no MFU or device peak on a CPU)."""
    return float(row[key]) if row.get(key) else None


def planned_line(output: str) -> str | None:
    """The loop's line that says what it trains and how (preset, ZeRO stage, offload, batch)."""
    return next((line.strip() for line in output.splitlines() if "MFLOPs/token" in line), None)


def plain_side(args, preset: str) -> dict:
    """The tuned plain loop, in a child process of its own."""
    command = [sys.executable, "-m", "benchmarks.gpu_mfu_vs_plain", "--plain-one", preset, *side_arguments(args)]
    done = run_side(command, {**os.environ, "PYTHONUNBUFFERED": "1"}, args.side_timeout, f"plain {preset}")
    if not done["ok"]:
        return done
    line = next((x for x in done["output"].splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"ok": False, "error": "no RESULT line: " + done["output"].strip()[-300:]}
    return {"ok": True, **json.loads(line[len("RESULT "):])}


def side_arguments(args) -> list[str]:
    return ["--data", str(Path(args.data).resolve()), "--device", args.device, "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--seq-len", str(args.seq_len), "--vocab-size", str(args.vocab_size),
            "--micro-batch", str(args.micro_batch), "--global-batch", str(args.global_batch),
            *(["--config", args.config] if args.config else [])]


def run_side(command: list[str], env: dict, timeout_s: float | None, what: str) -> dict:
    """Run one side; its output, or why it failed (its exit, the time limit, out of device memory)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) \
            else (expired.stdout or "")
        print(f"{what}: timed out after {timeout_s:.0f} s", *tail.splitlines()[-20:], sep="\n", file=sys.stderr)
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    output = done.stdout + done.stderr
    print(f"{what}: exit {done.returncode} in {time.perf_counter() - started:.0f} s", flush=True)
    if done.returncode:
        print(*output.strip().splitlines()[-40:], sep="\n", file=sys.stderr, flush=True)
        out_of_memory = "out of memory" in output.lower()
        return {"ok": False, "error": "out of device memory" if out_of_memory else
                " | ".join(output.strip().splitlines()[-3:])[-400:]}
    return {"ok": True, "output": output}

class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (-100: not counted), `chunk` rows at a time,
    the gradients computed in the same pass chunk by chunk (as Liger kernel's fused linear cross-entropy does):
    neither the whole batch's logits nor their fp32 softmax is ever held, and backward only scales what the
    forward computed. Matmuls in `dtype`, the log-sum-exp and the gradient of the logits in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, dtype: torch.dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            counted = targets != -100
            total = counted.sum().clamp(min=1)
            weight_c = weight.to(dtype)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                hidden_c, keep, picked = hidden[rows].to(dtype), counted[rows], targets[rows].clamp(min=0)
                logits = (hidden_c @ weight_c.T).float()
                log_z = torch.logsumexp(logits, dim=-1)
                loss += ((log_z - logits.gather(1, picked[:, None]).squeeze(1)) * keep).sum()
                grad = logits.sub_(log_z[:, None]).exp_()  # the softmax, in the logits' memory
                grad[torch.arange(len(picked), device=grad.device), picked] -= 1
                grad = grad.mul_((keep / total)[:, None]).to(dtype)
                grad_hidden[rows] = grad @ weight_c
                grad_weight += (grad.T @ hidden_c).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss / total

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


class Prefetch:
    """Micro-batches of rows on the device, the next one's copy always in flight: its rows are gathered on the
    host and pinned, and copied without blocking while the device still computes the one before."""

    def __init__(self, shards, batches, device: torch.device):
        self.shards, self.batches, self.device = shards, batches, device
        self.ready = self._issue()

    def _issue(self) -> torch.Tensor:
        input_ids, _ = self.shards.rows(next(self.batches))  # pretraining rows: the labels are the inputs
        host = torch.from_numpy(input_ids)
        # PyTorch's pinned-memory cache keeps a pinned buffer until the copy that reads it has run.
        return (host.pin_memory() if self.device.type == "cuda" else host).to(self.device, non_blocking=True)

    def next(self) -> torch.Tensor:
        current, self.ready = self.ready, self._issue()
        return current


def plain_loop(args, preset: str) -> dict:
    """The tuned peer: one process, no DeepSpeed, no torch.distributed; the rows and batch of solo's recipe."""
    from transformers import LlamaForCausalLM

    from solo.config import load_config
    from solo.tokens.shards import ShardLoader, TokenShards
    from solo.tokens.tokenizer import load, stop_token_ids
    from solo.train import presets
    from solo.train.config import TrainConfig
    from solo.train.hardware import peak_tflops

    cuda = args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    config = load_config(TrainConfig, recipe(args, preset), solo_overrides(args, preset))
    shards = TokenShards(Path(args.data) / "train")
    tokenizer = load(Path(args.data) / "tokenizer")
    vocab = -(-len(tokenizer) // config.vocab_multiple) * config.vocab_multiple  # padded as solo pads it
    llama = presets.llama_config(preset, vocab_size=vocab, seq_len=shards.seq_len,
                                 eos_token_id=stop_token_ids(tokenizer))
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM._from_config(llama, attn_implementation="sdpa").to(device)
    model.train()
    decoder = torch.compile(model.model)
    o = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                  weight_decay=o.weight_decay, fused=True)
    compute = torch.bfloat16 if cuda else torch.float32
    accumulation = config.global_batch // config.micro_batch
    feed = Prefetch(shards, ShardLoader(shards, 0, 1, config.micro_batch, config.seed).indices(), device)
    chunk = config.loop.loss_chunk_tokens

    def micro_step() -> torch.Tensor:
        input_ids = feed.next()
        targets = torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=-100)  # position t predicts t+1
        with torch.autocast(device.type, dtype=compute, enabled=cuda):
            hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
        loss = ChunkedLinearCrossEntropy.apply(hidden.flatten(0, 1), model.lm_head.weight, targets.flatten(),
                                               chunk, compute)
        (loss / accumulation).backward()
        return loss.detach()

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize()
            started = time.perf_counter()
        loss_sum = sum(micro_step() for _ in range(accumulation))
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    seconds = time.perf_counter() - started
    tokens_per_step = config.global_batch * shards.seq_len
    tokens_per_s = args.steps * tokens_per_step / seconds
    peak = peak_tflops()
    return {"tokens_per_s": round(tokens_per_s, 1), "seconds": round(seconds, 3),
            "loss": round(loss_sum.item() / accumulation, 4), "tokens_per_step": tokens_per_step,
            "mfu": round(tokens_per_s * presets.flops_per_token(llama, shards.seq_len) / 1e12 / peak, 4)
            if peak else None,
            "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "parameters": presets.parameter_count(llama),
            "label": (f"{config.micro_batch} rows × {accumulation} micro-batches, vocabulary {vocab:,}, SDPA, "
                      f"{'bf16 autocast' if cuda else 'fp32'}, compiled decoder, chunked cross-entropy "
                      f"({chunk:,} tokens), fused AdamW, {'pinned ' if cuda else ''}prefetch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["125m", "350m"])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the dry run (demo preset, small rows and batch, fp32, gloo)")
    parser.add_argument("--data", help="rows from --prepare (default: prepared into a temporary folder)")
    parser.add_argument("--prepare", metavar="DIR", help="only build the tokenizer and rows into DIR, then exit")
    parser.add_argument("--config", help="solo's recipe (default: configs/pretrain/<preset>-gpu.yaml)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--micro-batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--global-batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--side-timeout", type=float, default=None, help="seconds each side may take at most")
    parser.add_argument("--resume", action="store_true",
                        help="keep the presets the results file holds from the same device and settings")
    parser.add_argument("--plain-one", metavar="PRESET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cpu":
        args.presets = ["demo"]
        args.seq_len, args.vocab_size, args.micro_batch, args.global_batch = 128, 2048, 4, 8
        args.warmup, args.steps = min(args.warmup, 4), min(args.steps, 4)
    if args.warmup < args.steps or args.warmup % args.steps:
        parser.error("--warmup must be a multiple of --steps (solo's side logs every --steps steps)")
    if args.prepare:
        Path(args.prepare).mkdir(parents=True, exist_ok=True)
        print(json.dumps(prepare(Path(args.prepare), args.seq_len, args.vocab_size)))
        return
    if args.plain_one:
        print("RESULT " + json.dumps(plain_loop(args, args.plain_one)), flush=True)
        return

    name = RESULT_NAMES[args.device]
    conditions = Conditions()
    with tempfile.TemporaryDirectory(prefix="solo-mfu-vs-plain-") as tmp:
        work = Path(tmp)
        if args.data is None:
            args.data = str(work / "rows")
            print("prepared:", json.dumps(prepare(work / "rows", args.seq_len, args.vocab_size)), flush=True)
        prepared = json.loads((Path(args.data) / "prepared.json").read_text())
        if prepared["seq_len"] != args.seq_len:
            parser.error(f"--data {args.data} holds rows of {prepared['seq_len']} tokens, not --seq-len "
                         f"{args.seq_len}")
        # --resume keeps every row the results hold (another call's presets too) and measures again those of
        # --presets that did not finish.
        rows = earlier_rows(name, args) if args.resume else {}
        kept = [p for p in args.presets if p in rows and rows[p]["solo_over_plain"] is not None]
        for preset in args.presets:
            if preset in kept:
                print(f"{preset}: kept from {RESULTS / name}.json", flush=True)
                continue
            rows[preset] = compare(args, preset, work)
            print(preset, json.dumps(rows[preset]), flush=True)
            save(name, args, conditions, prepared, rows, kept, final=False)
    print(markdown(save(name, args, conditions, prepared, rows, kept, final=True)))


def compare(args, preset: str, work: Path) -> dict:
    """One row of the results: both sides of one preset, one process each, plain first."""
    plain = plain_side(args, preset)
    solo = solo_side(args, preset, work)
    row = {"preset": preset,
           "solo_tokens_per_s": solo.get("tokens_per_s"), "plain_tokens_per_s": plain.get("tokens_per_s"),
           "solo_mfu": solo.get("mfu"), "plain_mfu": plain.get("mfu"),
           "gpu_peak_gb": solo.get("gpu_peak_gb"), "plain_gpu_peak_gb": plain.get("gpu_peak_gb"),
           "solo_over_plain": None, "solo": solo, "plain": plain}
    if solo["ok"] and plain["ok"]:
        row["solo_over_plain"] = round(solo["tokens_per_s"] / plain["tokens_per_s"], 3)
    return row


def settings(args) -> dict:
    return {"seq_len": args.seq_len, "vocab_size": args.vocab_size, "warmup_steps": args.warmup,
            "measured_steps": args.steps}


def earlier_rows(name: str, args) -> dict[str, dict]:
    """The rows `name`'s results hold, by preset, when measured on this device with these settings (else none)."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if earlier["device"] != device or any(earlier.get(k) != v for k, v in settings(args).items()):
        print(f"--resume: {path} was measured elsewhere or otherwise: every preset is measured again", flush=True)
        return {}
    return {row["preset"]: row for row in earlier["rows"]}


def save(name: str, args, conditions: Conditions, prepared: dict, rows: dict, kept: list[str], final: bool) -> dict:
    devices = {r["plain"]["device"] for r in rows.values() if r["plain"]["ok"]}
    result = {
        "device": ", ".join(sorted(devices)) or "none ran",
        **(conditions.end() if final else conditions.so_far()),
        **settings(args), "data": prepared, "rows": list(rows.values()),
        "not_yet_run": [p for p in args.presets if p not in rows],
        "kept_from_an_earlier_run": kept,
        "goal": f"solo_over_plain >= {GOAL_RATIO}; solo_mfu >= {GOAL_MFU_350M:.0%} at 350m on an H100/H200",
    }
    record(name, result, markdown(result))
    return result


def figure(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(r: dict) -> str:
    lines = [
        "# solo's GPU recipe against a tuned plain PyTorch loop, one GPU", "",
        f"{ran_on(r)} Device: {r['device']}.", "",
        f"Rows of {r['seq_len']} tokens from a {r['data']['vocab_size']:,}-token BPE over "
        f"{r['data']['text_bytes']:,} bytes of the shared text ({r['data']['rows']:,} rows); "
        f"{r['measured_steps']} optimizer steps timed after {r['warmup_steps']}. *solo*: the shipped recipe "
        "through `jobs.pretrain` under the deepspeed launcher; *plain*: stock LlamaForCausalLM, SDPA, bf16 "
        "autocast (on a GPU), `torch.compile`, a chunked cross-entropy, fused AdamW, prefetch (pinned on a GPU), "
        "the batch of solo's recipe (each side's settings below). MFU: `solo.train.presets.flops_per_token` over "
        "`solo.train.hardware.PEAK_TFLOPS`, both sides.", "",
        "| preset | tokens a step | solo tokens/s | plain tokens/s | solo ÷ plain | solo MFU | plain MFU "
        "| solo device peak GB | plain device peak GB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        solo, plain = row["solo"], row["plain"]
        tokens = plain.get("tokens_per_step")
        lines.append(
            f"| {row['preset']} | {figure(tokens, ',')} | "
            f"{figure(row['solo_tokens_per_s'], ',.0f') if solo['ok'] else solo['error']} | "
            f"{figure(row['plain_tokens_per_s'], ',.0f') if plain['ok'] else plain['error']} | "
            f"{'**' + figure(row['solo_over_plain'], '') + '×**' if row['solo_over_plain'] else '–'} | "
            f"{figure(row['solo_mfu'], '.1%')} | {figure(row['plain_mfu'], '.1%')} | "
            f"{figure(row['gpu_peak_gb'], '.2f')} | {figure(row['plain_gpu_peak_gb'], '.2f')} |")
    lines += [""]
    for row in r["rows"]:
        if row["solo"].get("plan"):
            lines.append(f"- solo {row['preset']}: `{row['solo']['plan']}`")
        if row["plain"].get("ok"):
            lines.append(f"- plain {row['preset']}: {row['plain']['label']}")
    if r.get("kept_from_an_earlier_run"):
        lines += ["", f"Kept from an earlier run with the same settings: {', '.join(r['kept_from_an_earlier_run'])}."]
    if r.get("not_yet_run"):
        lines += ["", f"Still to run when this was written: {', '.join(r['not_yet_run'])}."]
    lines += ["", f"Goals: solo ≥ {GOAL_RATIO}× plain; MFU ≥ {GOAL_MFU_350M:.0%} at 350m on an H100/H200.", ""]
    if r["device"] == "cpu":
        lines += ["A CPU dry run (DS_ACCELERATOR=cpu, gloo, fp32, the demo preset): the figures show that both "
                  "sides run end to end, not what a GPU measures; there is no MFU without a GPU's peak.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
