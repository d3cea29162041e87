#!/usr/bin/env bash
# Issue 24's editing figures on a bare GPU machine: FLUX.1-Fill (inpaint) and FLUX.1-Kontext (edit) at 1024x1024, 28
# steps, float8 compiled (flux-<task>-torchao-fp8) vs bnb 8-bit quantized at load (flux-<task>-bnb-8bit) vs bf16 (the
# fidelity reference, uncapped): one `fluxnb bench` run per task (a run times the backends of one task), through
# gpu_lane.sh's bench stage. The summary checks the editing goal (EDITING_GOAL_SPEEDUP: 4x bnb 8-bit, error within 2x
# of its, under the 22 GB cap).
#
#   scripts/issue24_gpu.sh                        # results under outputs/issue24-<time>/<task>/ (bench.json, .png)
#   ISSUE24_TASKS="fill" scripts/issue24_gpu.sh   # one task
#   ISSUE24_TINY=1 scripts/issue24_gpu.sh         # the same logic on a CPU: the tiny editing entries, 32x32
#   ISSUE24_FAST_VARIANTS="attention=cudnn-fp8" scripts/issue24_gpu.sh   # the float8 entry changed, beside it
#
# Disk: each task's synthetic bf16 checkpoint is ~34 GB (the 8-bit and float8 entries quantize it while loading); it
# is deleted once its task ran, so one sits on disk (or /dev/shm) at a time. Memory: bf16 needs ~36 GB (an 80 GB
# card); the quantized entries run under the bench's 22 GB allocator cap. LANE_DEADLINE (default 560 s) is shared by
# the tasks: each bench gets what the ones before it left, and keeps its partial JSON when it runs out.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT_ROOT=${OUT:-$PWD/outputs/issue24-$(date -u +%Y%m%d-%H%M%S)}
DEADLINE=${LANE_DEADLINE:-560}
START=$SECONDS
stages="env bench"
status=0
if [ "${ISSUE24_TINY:-0}" = 1 ]; then
    export GPU_LANE_INSTALL=0 FLUXNB_SYNTHETIC=${FLUXNB_SYNTHETIC:-$OUT_ROOT/synthetic}
    stages="bench"
fi
for task in ${ISSUE24_TASKS:-fill kontext}; do
    if [ "${ISSUE24_TINY:-0}" = 1 ]; then
        # flux-tiny-<task> in every role, told apart by the cast after loading (bitsandbytes and float8 need a GPU)
        REF=flux-tiny-$task; BASE=flux-tiny-$task@bf16; FAST=flux-tiny-$task@fp32
        SIZE_ARGS="--size 32x32 --steps 2 --warmup-steps 1 --device cpu --synthetic-dims tiny"
    else
        REF=flux-$task; BASE=flux-$task-bnb-8bit; FAST=flux-$task-torchao-fp8
        SIZE_ARGS="--size 1024x1024 --steps 28"
    fi
    case $FAST in *@*) joiner=+ ;; *) joiner=@ ;; esac  # variants after the first are joined by +
    CHANGED=""
    for variant in ${ISSUE24_FAST_VARIANTS:-}; do CHANGED="$CHANGED --backend $FAST$joiner$variant"; done
    left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt 60 ]; then
        echo "issue24: $task not run: $left s left of LANE_DEADLINE=$DEADLINE"; status=1; continue
    fi
    echo "issue24: $task ($left s left)"
    OUT=$OUT_ROOT/$task GPU_LANE_STAGES=$stages LANE_DEADLINE=$left \
        BENCH_ARGS="--backend $REF --backend $FAST$CHANGED --backend $BASE --reference $REF --baseline $BASE --cleanup-weights gaussian $SIZE_ARGS" \
        bash scripts/gpu_lane.sh 2>&1 | tee "$OUT_ROOT/issue24-$task.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    stages="bench"  # the environment once
    if [ "${GPU_LANE_INSTALL:-1}" = 1 ] && [ -d /tmp/site ]; then  # the carried wheels once, too (~15 s a task)
        export GPU_LANE_INSTALL=0 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
done
echo "issue24: status $status; results in $OUT_ROOT"
exit "$status"
