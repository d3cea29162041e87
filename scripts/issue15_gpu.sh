#!/usr/bin/env bash
# One command on a bare GPU machine (H100/H200, ~9 minutes): the speed work's figures in one `fluxnb bench` run.
#
#   scripts/issue15_gpu.sh                      # results under outputs/issue15-<time>/ (bench.json, bench.png, log)
#   ISSUE15_TINY=1 scripts/issue15_gpu.sh       # the same logic on a CPU: flux-tiny, tiny synthetic dims, 64x64
#
# What runs (synthetic full-size weights, 1024x1024, 28 steps, 22 GB cap; the order puts what matters first, and a
# deadline keeps the partial JSON if time runs out):
#   Gaussian weights: bf16 reference (eager), bf16 compiled (the noise floor of the metrics), bnb 8-bit (the
#   baseline), float8 per-row compiled (the recommended fast backend: cold first call here, warm first call in a
#   new process sharing the compile cache, images/minute for a batch of 3 with T5 offloaded), float8 + TaylorSeer
#   (the cached mode, fixed schedule).
#   Outlier weights (fluxnb.models.synthetic.inject_outliers): bf16, float8 per-row, bnb 8-bit.
#   Then the predicted L4 seconds per image (fluxnb/bench/predict.py) in the table, labelled "predicted".
# Disk: each weight set is bf16 (~34 GB) + bnb 8-bit (~17 GB); the 8-bit one is deleted after its backend ran and a
# weight set's bf16 once its backends ran, so at most ~51 GB sit on disk (or /dev/shm) at a time.
# The wheels carried in .whl/ are installed by scripts/gpu_lane.sh (its install block), which this script calls.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/outputs/issue15-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

if [ "${ISSUE15_TINY:-0}" = 1 ]; then
    # CPU check of the same logic: flux-tiny stands in for every backend (the same variants and options)
    REF=flux-tiny; FLOOR=flux-tiny@compiled; BASE=flux-tiny@bf16; FAST=flux-tiny@compiled
    CACHED="flux-tiny@cache=taylorseer@2"
    BACKENDS="--backend $REF --backend $FLOOR --backend $BASE --backend $CACHED"
    OUTLIERS="--outlier-backend $REF --outlier-backend $BASE --outlier-backend $FAST"
    SIZE_ARGS="--size 64x64 --steps 4 --device cpu --synthetic-dims tiny --batch 2"
    export GPU_LANE_INSTALL=0 GPU_LANE_STAGES="bench" FLUXNB_SYNTHETIC=${FLUXNB_SYNTHETIC:-$OUT/synthetic}
    export LANE_DEADLINE=${LANE_DEADLINE:-900}
else
    REF=flux-dev; FLOOR=flux-dev@compiled; BASE=flux-dev-bnb-8bit; FAST=${ISSUE15_FAST:-flux-dev-torchao-fp8}
    CACHED=${ISSUE15_CACHED:-"flux-dev-torchao-fp8@cache=taylorseer@2"}
    # run order within each weight set: reference first, then the fast ones (they reuse the bf16 checkpoint), then
    # bnb 8-bit (its own 8-bit checkpoint, deleted right after), the noise floor last
    BACKENDS="--backend $REF --backend $FAST --backend $CACHED --backend $BASE --backend $FLOOR ${ISSUE15_EXTRA:-}"
    OUTLIERS="--outlier-backend $REF --outlier-backend $FAST --outlier-backend $BASE ${ISSUE15_OUTLIER_EXTRA:-}"
    OFFLOAD="--batch-offload-t5"
    [ "${ISSUE15_BATCH_OFFLOAD:-1}" = 1 ] || OFFLOAD=""  # T5 stays on the GPU (float8 fits the cap with it)
    SIZE_ARGS="--size 1024x1024 --steps 28 --repeats ${ISSUE15_REPEATS:-1} --batch ${ISSUE15_BATCH:-3}"
    SIZE_ARGS="$SIZE_ARGS --batch-backend $FAST $OFFLOAD"
    export GPU_LANE_STAGES=${GPU_LANE_STAGES:-"env bench"}
    export LANE_DEADLINE=${LANE_DEADLINE:-540}  # seconds from the lane's start: the bench stops there, JSON kept
fi
# ISSUE15_WEIGHTS=gaussian or =outliers runs one weight set only (a second call when one call ran out of time).
# Issue 25's knobs: ISSUE15_FAST (the fast entry: its row, warm first call and batch), ISSUE15_CACHED (the cached
# variant run beside the fast entry), ISSUE15_EXTRA (more backends, after the noise floor), ISSUE15_OUTLIER_EXTRA (more
# --outlier-backend), ISSUE15_BATCH (the batch size, default 3), ISSUE15_BATCH_OFFLOAD=0 (the batch with T5 left on the
# GPU), ISSUE15_REPEATS=3 (timed images per row, the median kept: one image's time moved by up to 5% in runs 35-36,
# the size of the cached goal's margin).
WEIGHTS=${ISSUE15_WEIGHTS:-gaussian,outliers}

WARM="--warm-compile --warm-compile-backend $FAST"
[ "${ISSUE15_WARM:-1}" = 1 ] || WARM=""  # ISSUE15_WARM=0: no first call in a new process (about 40 s less)
export BENCH_ARGS="$BACKENDS --reference $REF --baseline $BASE --weights $WEIGHTS $OUTLIERS \
 $WARM --cleanup-quantized --cleanup-weights gaussian,outliers $SIZE_ARGS"
echo "issue15: BENCH_ARGS=$BENCH_ARGS"
bash scripts/gpu_lane.sh 2>&1 | tee "$OUT/issue15.log"
status=${PIPESTATUS[0]}
if [ -f "$OUT/bench.json" ]; then
    PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} ${PYTHON:-python3} - "$OUT/bench.json" <<'PY' | tee "$OUT/summary.txt"
import sys

from fluxnb.bench import load_results, summarize
from fluxnb.models.config import load_config

results = load_results(sys.argv[1])
print("\n".join(summarize(results, recommended=load_config().recommended)["lines"]))
PY
fi
echo "issue15: status $status; results in $OUT"
exit "$status"
