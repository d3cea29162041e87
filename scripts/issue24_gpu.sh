#!/usr/bin/env bash
# Issue 24's editing figures on a bare GPU machine: FLUX.1-Fill (inpaint) and FLUX.1-Kontext (edit) at 1024x1024, 28
# steps, float8 compiled (flux-torchao-fp8dq) vs bnb 8-bit quantized at load (flux-bnb-8bit-at-load) vs bf16 (the
# reference, uncapped), in one run (scripts/issue24_gpu.py through gpu_lane.sh's optional "editing" stage).
#
#   scripts/issue24_gpu.sh                         # results under outputs/issue24-<time>/ (editing.json, log)
#   ISSUE24_TASKS=fill scripts/issue24_gpu.sh      # one task per call (a device call lasts at most 10 minutes)
#   ISSUE24_TINY=1 scripts/issue24_gpu.sh          # the same logic on a CPU: the tiny editing models, 64x64
#
# Disk: each task's synthetic bf16 checkpoint is ~34 GB (its 8-bit and float8 roles quantize it while loading); it is
# deleted once its task ran (--cleanup), so one sits on disk (or /dev/shm) at a time. Memory: bf16 needs ~36 GB
# (an 80 GB card); the quantized roles run under the bench's 22 GB allocator cap.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/outputs/issue24-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

if [ "${ISSUE24_TINY:-0}" = 1 ]; then
    export GPU_LANE_INSTALL=0 GPU_LANE_STAGES="editing" FLUXNB_SYNTHETIC=${FLUXNB_SYNTHETIC:-$OUT/synthetic}
    export EDITING_ARGS="--tiny --tasks ${ISSUE24_TASKS:-fill,kontext} ${ISSUE24_ARGS:-}"
else
    export GPU_LANE_STAGES=${GPU_LANE_STAGES:-"env editing"}
    export EDITING_ARGS="--tasks ${ISSUE24_TASKS:-fill,kontext} --cleanup ${ISSUE24_ARGS:-}"
    export LANE_DEADLINE=${LANE_DEADLINE:-560}  # seconds from the lane's start; the JSON keeps what finished
fi
echo "issue24: EDITING_ARGS=$EDITING_ARGS"
bash scripts/gpu_lane.sh 2>&1 | tee "$OUT/issue24.log"
status=${PIPESTATUS[0]}
echo "issue24: status $status; results in $OUT"
exit "$status"
