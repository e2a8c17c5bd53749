#!/usr/bin/env bash
# The GPU check of issue 19 ("GPU first") as one script: run it from the repository root on a CUDA machine.
#
#   scripts/gpu_check.sh              on the GPU machine: everything below, about 9 minutes in all
#   scripts/gpu_check.sh --cpu-dry    here, on a CPU: every step with tiny settings (the script must not break on
#                                     first use); nothing it measures means anything
#   scripts/gpu_check.sh --prepare    here, before: the wheels the GPU machine lacks into .whl/ (pip wheel,
#                                     no dependencies) and the MedMNIST files into .gpudata/ (both git-ignored)
#   scripts/gpu_check.sh --v2-table   on the GPU machine, in a device session of its own: item 6 instead of the
#                                     steps below -- the medmnist-v2-gpu grid (see "The v2 table" at the end)
#                                     (with --cpu-dry: its plumbing on the CPU, two one-epoch runs)
#
# Steps, each under its own time limit, and never past the whole budget ($GPU_CHECK_BUDGET seconds, 570):
#   env          nvidia-smi, torch / CUDA / transformers / accelerate versions
#   tests        python -m pytest -q -m "not slow" twice at once, half the cores each: in the plain order
#                (tests-plain.log, tests.xml) and shuffled (--random-order, seed 19: tests-shuffled.log / .xml)
#   perf-vit     perf --model vit_b16 (random weights, 224 px, batch 256, bf16) with --profile, and the tutorial's
#                Trainer pipeline (c) over 6 steps for the ours/tutorial ratio
#   perf-vit-rc  the same with --compile regional, without (c)
#   perf-resnet  perf --model resnet18_28 --dataset retinamnist --batch 128, with (c)
#   workers      scripts/workers_throughput.py: runs/hour at --workers 1,2,4,8 on a medmnist-v2 Breast+Retina grid
#   perf-resnet-ro  (if time is left) resnet18_28 with --compile reduce-overhead (CUDA graphs)
# The perf and workers steps run alone (after the tests), so nothing else competes for the GPU while they time.
# Everything goes to $WORK (default a new /tmp/gpu-check.XXXXXX): one log per step, perf JSON + profile tables, the workers
# JSON, junit XML, and summary.txt (each step's exit status and seconds). After each step all of it is packed
# into $OUT/gpu-check.tar.gz (default $OUT: ./gpu-check-out), beside a copy of summary.txt: a device machine
# returns only a few files from $OUT (8 at most), so what comes back must be few files, and is complete even
# when the call is cut off. The machine lacks medmnist, fire,
# termcolor, datasets, dill, multiprocess (and pytest-random-order): they come from .whl/ (installed with
# --no-deps into /tmp/site); the .npz files from .gpudata/.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
PART=checks
for arg in "$@"; do
  case "$arg" in
    --cpu-dry) MODE=cpu ;;
    --prepare) MODE=prepare ;;
    --v2-table) PART=v2-table ;;
    *) echo "usage: scripts/gpu_check.sh [--cpu-dry | --prepare] [--v2-table]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
WHEELS=(medmnist fire termcolor datasets dill multiprocess pytest-random-order)

if [ "$MODE" = prepare ]; then
  DATA=${MEDMNIST_DATA:-../shared/data/medmnist}
  mkdir -p .whl .gpudata
  "$PY" -m pip wheel -q --no-deps -w .whl "${WHEELS[@]}" || exit 1   # builds a wheel where PyPI has only an sdist
  for version in 3.10 3.11 3.12 3.13; do  # multiprocess ships one wheel per Python version: the GPU machine's may differ
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" -d .whl multiprocess || exit 1
  done
  cp "$DATA/breastmnist.npz" "$DATA/retinamnist.npz" .gpudata/ || exit 1
  ls -la .whl .gpudata
  exit 0
fi

if [ "$MODE" = gpu ] && ! { [ -f .gpudata/breastmnist.npz ] && [ -f .gpudata/retinamnist.npz ] \
    && { compgen -G ".whl/medmnist-*.whl" > /dev/null || "$PY" -c "import medmnist, datasets" 2> /dev/null; }; }; then
  # both folders are git-ignored: a device machine has them only when the call carries them
  echo "gpu_check: .gpudata/*.npz missing, or .whl/ where medmnist/datasets are not installed; run" \
       "scripts/gpu_check.sh --prepare on the machine that has the data, and carry .whl and .gpudata" >&2
  exit 3
fi
OUT=${OUT:-$ROOT/gpu-check-out}
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}  # a fresh folder: no stale logs
mkdir -p "$OUT" "$WORK"
BUDGET=${GPU_CHECK_BUDGET:-570}
START=$(date +%s)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error MPLBACKEND=Agg PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT"
# One at a time, in name order with --upgrade: a newer Python's wheel fails, an older compatible one is replaced by
# the next (multiprocess-...-py310, py311, ...), so the newest one this Python takes stays.
if compgen -G ".whl/*.whl" > /dev/null; then
  for wheel in .whl/*.whl; do
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$wheel" >> "$WORK/wheels.log" 2>&1 \
      || echo "not installed: $wheel" >> "$WORK/wheels.log"
  done
  export PYTHONPATH="$ROOT:/tmp/site"
fi
if [ "$MODE" = gpu ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  # perf and the workers would fall back to the CPU and time out on ViT-B batches: stop with one line instead
  echo "gpu_check: torch sees no CUDA device on this machine; nothing measured" | tee "$OUT/summary.txt" >&2
  exit 4
fi

if [ "$MODE" = gpu ]; then
  DATA_ROOT=.gpudata
  TEST_ARGS=(-m "not slow")
  PERF_VIT=(--model vit_b16 --dataset breastmnist --size 28 --batch 256 --steps 10 --warmup 3 --rounds 2)
  PERF_RESNET=(--model resnet18_28 --dataset retinamnist --size 28 --batch 128 --steps 30 --warmup 5 --rounds 3)
  TUTORIAL_STEPS=(--tutorial-steps 6)  # (c), per-sample PIL work on the CPU: 6 batches give a steady rate
  COMPILE_BACKEND=inductor
  WORKERS=(--workers 1,2,4,8 --datasets breastmnist,retinamnist --models resnet18_28 --seeds 0,1,2,3 --epochs 2)
  LIMITS=(tests:250 perf-vit:85 perf-vit-rc:90 perf-resnet:40 workers:105 perf-resnet-ro:60 v2-table:480)
  V2_GRID=(--suite medmnist-v2-gpu)
  V2_WORKERS=${V2_WORKERS:-4}
  V2_TARBALL=medmnist-v2-gpu.tar.gz
else  # tiny settings on the CPU: each step's plumbing, not its numbers
  DATA_ROOT=bundled
  TEST_ARGS=(tests/test_isolation.py)
  PERF_VIT=(--model vit_tiny --dataset breastmnist --size 28 --batch 4 --steps 2 --warmup 1 --rounds 1 --device cpu --threads 1)
  PERF_RESNET=(--model resnet18_28 --dataset retinamnist --size 28 --batch 8 --steps 2 --warmup 1 --rounds 1 --device cpu --threads 1)
  TUTORIAL_STEPS=(--tutorial-steps 1)
  COMPILE_BACKEND=eager
  export OMP_NUM_THREADS=1  # one thread per worker at every N, so the records of N=2 must equal those of N=1
  WORKERS=(--workers 1,2 --suite smoke --datasets breastmnist --models resnet18_28 --seeds 0,1 --epochs 1 --limit 32)
  LIMITS=(tests:300 perf-vit:300 perf-vit-rc:600 perf-resnet:300 workers:600 perf-resnet-ro:600 v2-table:600)
  V2_GRID=(--suite medmnist-v2-gpu --datasets breastmnist --models resnet18_28,resnet18_224 --seeds 0 --epochs 1
           --limit 16 --batch-size 16)
  V2_WORKERS=2
  V2_TARBALL=medmnist-v2-gpu-dry.tar.gz  # never mixed with a GPU tarball in .gpudata/
  BUDGET=${GPU_CHECK_BUDGET:-3600}
fi

limit_of() { for item in "${LIMITS[@]}"; do [ "${item%%:*}" = "$1" ] && echo "${item#*:}"; done; }

# step NAME COMMAND...: runs COMMAND under min(its limit, what is left of the budget), logs to $WORK/NAME.log
step() {
  local name=$1; shift
  local left=$(( BUDGET - ($(date +%s) - START) ))
  local limit; limit=$(limit_of "$name")
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "$name: skipped (budget spent)" | tee -a "$WORK/summary.txt"
    return
  fi
  echo "== $name (limit ${limit} s): $*"
  local began; began=$(date +%s)
  if declare -F "$1" > /dev/null; then  # a function of this script: it applies the limit itself
    STEP_LIMIT=$limit "$@" > "$WORK/$name.log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  fi
  local status=$?
  local note=""; [ "$status" = 124 ] && note=" (timed out)"; [ "$status" = 137 ] && note=" (killed: past its limit, or out of memory)"
  echo "$name: exit $status$note in $(( $(date +%s) - began )) s" | tee -a "$WORK/summary.txt"
  tail -n 4 "$WORK/$name.log"
  pack
}

# pack: all of $WORK into $OUT/gpu-check.tar.gz (written aside, then renamed), and summary.txt beside it
pack() {
  tar -czf "$OUT/gpu-check.tar.gz.part" -C "$WORK" . && mv "$OUT/gpu-check.tar.gz.part" "$OUT/gpu-check.tar.gz"
  cp "$WORK/summary.txt" "$OUT/summary.txt"
}

: > "$WORK/summary.txt"
{
  echo "mode: $MODE, $(date -u +%FT%TZ), commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers, accelerate, platform; print(platform.python_version(), 'torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0), 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, 'cpus', len(__import__('os').sched_getaffinity(0)))"
} > "$WORK/env.txt" 2>&1
cat "$WORK/env.txt"

# The quick pass in the plain and in a shuffled order, at once, half the cores each; exit 1 if either failed.
tests_both_orders() {
  local half=$(( $("$PY" -c "import os; print(len(os.sched_getaffinity(0)))") / 2 ))
  [ "$half" -lt 1 ] && half=1
  local pytest=(timeout --kill-after=10 "$STEP_LIMIT" env OMP_NUM_THREADS="$half" "$PY" -m pytest -q -p no:randomly
                -p no:cacheprovider -rfE)
  "${pytest[@]}" --junitxml="$WORK/tests.xml" "${TEST_ARGS[@]}" > "$WORK/tests-plain.log" 2>&1 &
  local plain=$!
  local shuffled=""
  if "$PY" -c "import random_order" 2> /dev/null; then
    "${pytest[@]}" --random-order --random-order-seed=19 --junitxml="$WORK/tests-shuffled.xml" "${TEST_ARGS[@]}" \
      > "$WORK/tests-shuffled.log" 2>&1 &
    shuffled=$!
  else
    echo "shuffled order: not run (pytest-random-order is not installed)"
  fi
  wait "$plain"; local plain_status=$?
  local shuffled_status=0
  [ -n "$shuffled" ] && { wait "$shuffled"; shuffled_status=$?; }
  echo "plain order: exit $plain_status ($(tail -n 1 "$WORK/tests-plain.log"))"
  [ -n "$shuffled" ] && echo "shuffled order: exit $shuffled_status ($(tail -n 1 "$WORK/tests-shuffled.log"))"
  [ "$plain_status" = 0 ] && [ "$shuffled_status" = 0 ]
}

# The v2 table: the medmnist-v2-gpu grid (36 runs of 100 epochs) on $V2_WORKERS packed workers (default 4) under
# the v2-table limit (the largest run, ResNet-50 at 224 px, batch 128, fp32, keeps 10.3 GiB of activations for
# the backward pass -- counted on the CPU with saved_tensors_hooks -- so 4 at once fit an H100 or H200; the grid
# is 25.8 PFLOP of training, counted with FlopCounterMode). The grid's results folder lies outside $OUT
# (checkpoints are too large to come back); $OUT/$V2_TARBALL holds the finished records and the claims
# log (whose claim/release times give each run's place in the grid's wall time), and gpu-check.tar.gz also holds
# v2-status.txt (`benchmark status`: every run's state and timing) and v2-table.md (scripts/run_table.py). At its
# limit the grid gets SIGTERM: the running runs checkpoint and stop. Runs left for later: copy the records tarball
# to .gpudata/ and call again; its finished records are unpacked first, so the grid resumes with the runs still
# missing (a stopped run starts over: its checkpoint did not come back).
v2_table() {
  local results=${V2_RESULTS:-$(mktemp -d "${TMPDIR:-/tmp}/medmnist-v2-gpu.XXXXXX")}
  if [ -f ".gpudata/$V2_TARBALL" ]; then
    tar -xzf ".gpudata/$V2_TARBALL" -C "$results" && echo "unpacked the finished runs of an earlier call"
  fi
  step v2-table "$PY" -m benchmark run "${V2_GRID[@]}" --workers "$V2_WORKERS" --data-root "$DATA_ROOT" \
    --output "$results" --quiet
  "$PY" -m benchmark status "${V2_GRID[@]}" --data-root "$DATA_ROOT" --output "$results" > "$WORK/v2-status.txt" 2>&1
  "$PY" scripts/run_table.py "$results/runs/medmnist-v2-gpu" > "$WORK/v2-table.md" 2>&1
  tar -czf "$OUT/$V2_TARBALL.part" -C "$results" runs/medmnist-v2-gpu claims/medmnist-v2-gpu \
    && mv "$OUT/$V2_TARBALL.part" "$OUT/$V2_TARBALL"
  grep -c '^completed' "$WORK/v2-status.txt" | sed 's/$/ runs completed/' | tee -a "$WORK/summary.txt"
  pack
}

PERF=("$PY" -m benchmark perf --data-root "$DATA_ROOT" --output "$WORK/perf")
if [ "$PART" = v2-table ]; then
  v2_table
else
  step tests tests_both_orders
  step perf-vit "${PERF[@]}" "${PERF_VIT[@]}" "${TUTORIAL_STEPS[@]}" --profile
  step perf-vit-rc "${PERF[@]}" "${PERF_VIT[@]}" --skip-tutorial --compile regional --compile-backend "$COMPILE_BACKEND"
  step perf-resnet "${PERF[@]}" "${PERF_RESNET[@]}" "${TUTORIAL_STEPS[@]}"
  step workers "$PY" scripts/workers_throughput.py --data-root "$DATA_ROOT" --output "$WORK" "${WORKERS[@]}"
  step perf-resnet-ro "${PERF[@]}" "${PERF_RESNET[@]}" --skip-tutorial --compile reduce-overhead \
    --compile-backend "$COMPILE_BACKEND"
fi

echo "total $(( $(date +%s) - START )) s" | tee -a "$WORK/summary.txt"
pack
echo "outputs in $WORK, packed into $OUT:"
ls -l "$OUT"
