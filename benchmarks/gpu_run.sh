#!/usr/bin/env bash
# Issue 22's GPU benchmarks as the one prepared script for the device machine: gpu_mfu_vs_plain (125m, 350m)
# and stream_vs_zero3 (1.3b, 2.7b at 131,072 tokens a step), each piece under a time limit of its own and all
# of it under BUDGET_S (570 s), so one slow piece cannot eat the rest; results and the log land in $OUT.
#
# 1. Here, on the CPU, once (a few minutes; downloads a few pinned wheels with pip):
#      bash benchmarks/gpu_run.sh prepare
#    It fills build/gpu-bench/ (git-ignored, 39 MB, all that travels besides the 2 MB checkout):
#      whl/       DeepSpeed, pydantic, hjson (../shared/tools/gpu-wheels.sh's .whl/ less bitsandbytes), and what
#                 jobs.pretrain imports that the GPU image lacks: datasets, dill, multiprocess, zstandard,
#                 py3langid, xgrammar, apache-tvm-ffi, gguf, jsonschema and its three, at this venv's versions;
#      ray.tar.xz Ray for Python 3.12 less what a process that never starts a Ray cluster leaves unused (the
#                 raylet and GCS binaries, the Java jars, the dashboard's web client, RLlib, Serve, LLM): 11 MB
#                 against the 79 MB wheel, which cannot travel (64 MiB in all). solo imports Ray at module level
#                 (solo.runtime, solo.train.checkpoints, the pipeline), also under the deepspeed launcher;
#      rows/      the 32k BPE and rows of 1,024 tokens (benchmarks/gpu_mfu_vs_plain.py --prepare).
# 2. Here, the dry run of the whole script (DRY=1: the same pieces with their --device cpu flags; 2-3 minutes):
#      DRY=1 bash benchmarks/gpu_run.sh
# 3. The device call (the `run` tool):
#      command:   bash benchmarks/gpu_run.sh
#      carry:     ["build/gpu-bench"]
#      timeout_s: 600
#    Then copy the files it brings back ($OUT: gpu_mfu_vs_plain.{json,md}, stream_vs_zero3_128k.{json,md},
#    gpu_run.log, ops.log) into benchmarks/results/ (the logs stay out) and give the machine back.
#    (stream_vs_zero3.json keeps the H200 run at 32k tokens a step that the planner's speed model is fitted to.)
# What fits: the two gpu_mfu_vs_plain presets take about 6 minutes (most of it start-up and torch.compile);
# stream_vs_zero3 at 131k tokens a step takes about 1.5–2 minutes an engine at 1.3b and twice that at 2.7b, so
# one 10-minute call measures gpu_mfu_vs_plain and starts 1.3b, and whatever a limit cut short is recorded as
# "timed out". A second call finishes stream_vs_zero3 (`--resume` keeps what the first measured):
#      command:   PIECES=stream bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BENCH=build/gpu-bench
DRY=${DRY:-0}
PIECES=${PIECES:-mfu stream}
BUDGET_S=${BUDGET_S:-570}

prepare() {
  set -e
  mkdir -p "$BENCH/whl"
  [ -d .whl ] && ls .whl/deepspeed-*.whl >/dev/null 2>&1 || bash ../shared/tools/gpu-wheels.sh
  find .whl -type f -name '*.whl' ! -name 'bitsandbytes-*' -exec cp {} "$BENCH/whl/" \;  # QLoRA's; no benchmark here
  pins=$(.venv/bin/python -c 'import importlib.metadata as m; print(" ".join(f"{d}=={m.version(d)}" for d in
    ["datasets", "dill", "multiprocess", "zstandard", "py3langid", "xgrammar", "apache-tvm-ffi", "gguf",
     "jsonschema", "jsonschema-specifications", "referencing", "rpds-py"]))')
  platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  # shellcheck disable=SC2086  # the pins and platforms are lists of words
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d "$BENCH/whl" $pins
  ray_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("ray"))')
  tmp=$(mktemp -d)
  # shellcheck disable=SC2086
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d "$tmp" "ray==$ray_version"
  .venv/bin/python - "$tmp"/ray-*.whl "$BENCH/ray.tar.xz" <<'PY'
import io, sys, tarfile, zipfile
# Needed only to start or serve a Ray cluster, which a one-process training run under the deepspeed launcher never
# does; importing ray, ray.train and ray.data works without them.
UNUSED = ("ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet", "ray/jars/", "ray/dashboard/client/",
          "ray/rllib/", "ray/_private/runtime_env/agent/thirdparty_files/", "ray/llm/", "ray/serve/")
with zipfile.ZipFile(sys.argv[1]) as wheel, tarfile.open(sys.argv[2], "w:xz") as tar:
    for entry in wheel.infolist():
        if entry.is_dir() or entry.filename.startswith(UNUSED):
            continue
        member = tarfile.TarInfo(entry.filename)
        data = wheel.read(entry)
        member.size, member.mode = len(data), 0o755 if entry.filename.endswith(".so") else 0o644
        tar.addfile(member, io.BytesIO(data))
PY
  rm -rf "$tmp"
  [ -f "$BENCH/rows/prepared.json" ] || .venv/bin/python -m benchmarks.gpu_mfu_vs_plain --prepare "$BENCH/rows"
  du -sh "$BENCH"/*; du -sh "$BENCH"
}

if [ "${1:-}" = prepare ]; then
  prepare
  exit
fi

if [ "$DRY" = 1 ]; then
  PY=.venv/bin/python
  OUT=${OUT:-build/gpu-run-dry}
else
  PY=python3
  OUT=${OUT:?run on the device machine, or DRY=1 here}
fi
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1
START=$(date +%s)
export PYTHONUNBUFFERED=1

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# piece NAME LIMIT_S COMMAND...: run it for at most LIMIT_S seconds, or what the budget has left.
piece() {
  local name=$1 limit=$2
  shift 2
  local budget
  budget=$(left)
  if [ "$budget" -lt 45 ]; then
    echo "== $name: skipped, ${budget}s of the budget left"
    return
  fi
  [ "$limit" -gt "$budget" ] && limit=$budget
  echo "== $name (at most ${limit}s; $(date -u +%T)): $*"
  timeout -k 10 "$limit" "$@"
  echo "== $name: exit $? after $(($(date +%s) - START))s of the script"
}

if [ "$DRY" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$BENCH"/whl/*.whl || exit 1
  python3 -c 'import ray' 2>/dev/null || tar -xJf "$BENCH/ray.tar.xz" -C /tmp/site || exit 1
  export PYTHONPATH=/tmp/site
  python3 -c 'import jobs.pretrain, solo.train.loop, torch, transformers, deepspeed
print("imports ok: torch", torch.__version__, "transformers", transformers.__version__, "deepspeed",
      deepspeed.__version__)' || exit 1
fi
# DeepSpeed's CPU Adam (stream_vs_zero3's offload and stream engine) compiles while the first piece keeps the GPU
# busy, on 4 of the 16 cores (MAX_JOBS: ninja's) so that the measured loops keep theirs, for 4 minutes at most.
MAX_JOBS=4 timeout -k 10 240 $PY -c 'from solo.runtime import build_deepspeed_ops; build_deepspeed_ops(nvme=False)' \
  > "$OUT/ops.log" 2>&1 &
OPS=$!

for name in $PIECES; do
  case "$name" in
    mfu)
      if [ "$DRY" = 1 ]; then
        piece mfu 300 $PY -m benchmarks.gpu_mfu_vs_plain --device cpu --side-timeout 140
      else
        piece mfu-125m 250 $PY -m benchmarks.gpu_mfu_vs_plain --data "$BENCH/rows" --presets 125m --side-timeout 120
        piece mfu-350m 330 $PY -m benchmarks.gpu_mfu_vs_plain --data "$BENCH/rows" --presets 350m --resume \
          --side-timeout 160
      fi ;;
    stream)
      wait "$OPS"
      if [ "$DRY" = 1 ]; then
        piece stream 300 $PY -m benchmarks.stream_vs_zero3 --device cpu --run-timeout 90
      else
        gpu=(--seq-len 2048 --vocab-size 32000 --micro-batch 4 --global-batch 64 --warmup 1 --steps 1
             --device-memory-gb 24 --baseline-activation-checkpointing --results stream_vs_zero3_128k)
        # --resume: a second script call (PIECES=stream) keeps what the first measured and runs the rest.
        piece stream-1.3b 480 $PY -m benchmarks.stream_vs_zero3 --presets 1.3b "${gpu[@]}" --run-timeout 150 --resume
        piece stream-2.7b 540 $PY -m benchmarks.stream_vs_zero3 --presets 1.3b 2.7b "${gpu[@]}" --run-timeout 200 \
          --resume
      fi ;;
    *) echo "unknown piece $name (PIECES: mfu, stream)"; exit 2 ;;
  esac
done
wait "$OPS" 2>/dev/null
if [ "$DRY" = 1 ]; then results="gpu_mfu_vs_plain_cpu stream_vs_zero3_cpu"; else
  results="gpu_mfu_vs_plain stream_vs_zero3_128k"; fi
for result in $results; do
  cp "benchmarks/results/$result.json" "benchmarks/results/$result.md" "$OUT/" 2>/dev/null
done
echo "== done in $(($(date +%s) - START))s; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
