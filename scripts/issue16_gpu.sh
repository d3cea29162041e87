#!/usr/bin/env bash
# More than one GPU, measured: data-parallel batch throughput on 1, 2 (and 4) GPUs and single-image latency with
# Ulysses context parallelism on 2 (and 4) GPUs, with its fidelity against the 1-GPU image of the same seed.
#
#   bash scripts/issue16_gpu.sh            # on a bare 2- or 4-GPU host; results (JSON, chart, run folders) in $OUT
#   ISSUE16_TINY=1 bash scripts/issue16_gpu.sh   # the same logic on the CPU: tiny model, 64x64, 2 steps, gloo
#
# GPU mode: the full-size synthetic bf16 checkpoint (random weights, FLUX.1-dev dimensions: fluxnb.models.synthetic) is
# built once into /dev/shm; the batch is 8 prompts x 2 images, 1024x1024, 28 steps, model flux-dev (type
# flux-bf16) with --checkpoint; the GPU counts follow `nvidia-smi -L`. Stages run in order of importance (1, 2
# GPUs, Ulysses-2, then 4 GPUs and Ulysses-4) and a stage that would not finish before ISSUE16_DEADLINE seconds is
# skipped (said so in the JSON). Wheels carried in .whl/ are installed into /tmp/site first (no network there).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# Given $OUT (the device machine sets it; only a few files come back from there): everything but the JSON, the
# chart and the table is packed into issue16-details.tgz at the end. ISSUE16_PACK=0/1 overrides.
PACK=${ISSUE16_PACK:-$([ -n "${OUT:-}" ] && echo 1 || echo 0)}
OUT=${OUT:-$ROOT/outputs/issue16-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/runs"
PY=${PYTHON:-python3}
DEADLINE=${ISSUE16_DEADLINE:-520}
START=$SECONDS
# NVLink SHARP / multicast stay off in every process (the device machines require it).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export FLUXNB_CACHE=${FLUXNB_CACHE:-/tmp/fluxnb-cache}
# torchrun sets OMP_NUM_THREADS=1 for 2+ processes per node; the same value for every stage keeps 1 GPU comparable.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

GPU_LANE_INSTALL=${ISSUE16_INSTALL:-1} . scripts/carried_wheels.sh
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

if [ "${ISSUE16_TINY:-0}" = 1 ]; then
    MODEL=flux-tiny; SIZE=64; STEPS=2; CHECKPOINT=(); COUNTS="1 2"; CP_COUNTS="2"
    echo "== ISSUE16_TINY: flux-tiny, ${SIZE}x${SIZE}, $STEPS steps, CPU processes (gloo)"
else
    MODEL=flux-dev; SIZE=1024; STEPS=28
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    echo "== $(date -u +%FT%TZ): $gpus GPU(s)"; nvidia-smi -L || true; nvidia-smi topo -m 2>/dev/null | head -8 || true
    if [ "${gpus:-0}" -lt 2 ]; then echo "error: this script needs 2+ GPUs (nvidia-smi -L shows ${gpus:-0})"; exit 1; fi
    COUNTS="1 2"; CP_COUNTS="2"
    if [ "$gpus" -ge 4 ]; then COUNTS="1 2 4"; CP_COUNTS="2 4"; fi
    if [ -z "${FLUXNB_SYNTHETIC:-}" ]; then  # ~33 GB: /dev/shm when it has room (fast loads), else /tmp
        shm=$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -1 | tr -d ' ' || echo 0)
        if [ "${shm:-0}" -ge 40 ]; then export FLUXNB_SYNTHETIC=/dev/shm/fluxnb-synthetic; else export FLUXNB_SYNTHETIC=/tmp/fluxnb-synthetic; fi
    fi
    echo "== building the synthetic bf16 checkpoint in $FLUXNB_SYNTHETIC ($(date -u +%FT%TZ))"
    ck=$($PY -c "from fluxnb.models.synthetic import ensure_synthetic_checkpoint as e; import sys; print(e('bf16', log=lambda m: print(m, file=sys.stderr)))" | tail -1) || exit 1
    CHECKPOINT=(--checkpoint "$ck")
    echo "checkpoint: $ck ($((SECONDS - START)) s)"
fi
$PY -m fluxnb.cli doctor > "$OUT/doctor.txt" 2>&1 || true

cat > "$OUT/prompts.yaml" <<'EOF'
- a lighthouse on a cliff at dawn, oil painting
- a red fox in fresh snow, telephoto photograph
- a bowl of ramen on a wooden table, studio light
- an astronaut reading in a library, watercolor
- a futuristic tram in a rainy street at night
- a field of sunflowers under a thunderstorm
- a paper origami crane on a desk, macro photograph
- a mountain village in autumn, isometric illustration
EOF
FIRST_PROMPT="a lighthouse on a cliff at dawn, oil painting"
COMMON=(--model "$MODEL" "${CHECKPOINT[@]}" --width "$SIZE" --height "$SIZE" --steps "$STEPS")

# stage NAME ESTIMATE_SECONDS COMMAND...: runs it with what is left of the deadline, logs to $OUT/stage-NAME.log
stage() {
    local name=$1 estimate=$2; shift 2
    local left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt "$estimate" ]; then
        echo "== skip $name: $left s left, it needs about $estimate s" | tee "$OUT/stage-$name.log"
        echo "skipped: $left s left of ISSUE16_DEADLINE=$DEADLINE, needs about $estimate s (error)" >> "$OUT/stage-$name.log"
        return 0
    fi
    echo "== $name ($(date -u +%FT%TZ), $left s left): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$left" "$@" > "$OUT/stage-$name.log" 2>&1
    local rc=$?
    grep -v "Warning\|warn(\|UserWarning\|^\s*$" "$OUT/stage-$name.log" | tail -4
    echo "   $name: exit $rc after $((SECONDS - t0)) s"
    [ $rc = 0 ] || echo "error: $name exited with $rc (log: stage-$name.log)" >> "$OUT/stage-$name.log"
}

if [ "${ISSUE16_TINY:-0}" = 1 ]; then est_batch=(0 60 60 60 60); est_cp=0; else est_batch=(0 200 120 120 100); est_cp=90; fi
for n in $COUNTS; do
    stage "dp$n" "${est_batch[$n]:-100}" $PY -m fluxnb.cli generate "${COMMON[@]}" --prompts "$OUT/prompts.yaml" \
        --num-images 2 --gpus "$n" --output-dir "$OUT/runs/dp$n"
    if [ "$n" = 2 ]; then  # the 2-GPU figures first: Ulysses-2 before the 4-GPU batch
        stage cp2 "$est_cp" $PY -m fluxnb.cli generate "${COMMON[@]}" --prompt "$FIRST_PROMPT" --seed 0 \
            --num-images 3 --gpus 2 --parallel ulysses --output-dir "$OUT/runs/cp2"
    fi
done
for n in $CP_COUNTS; do
    [ "$n" = 2 ] && continue
    stage "cp$n" "$est_cp" $PY -m fluxnb.cli generate "${COMMON[@]}" --prompt "$FIRST_PROMPT" --seed 0 \
        --num-images 3 --gpus "$n" --parallel ulysses --output-dir "$OUT/runs/cp$n"
done
mkdir -p "$OUT/runs/cp2"  # so the report says when the Ulysses stage made nothing
echo "== report ($(date -u +%FT%TZ), $((SECONDS - START)) s)"
$PY scripts/issue16_report.py "$OUT" > "$OUT/issue16.txt"
status=$?
# The PNGs of the full-size runs are large and noise (random weights): keep the manifests and one image per stage.
if [ "${ISSUE16_TINY:-0}" != 1 ]; then
    for run in "$OUT"/runs/*/*/; do
        [ -d "$run" ] || continue
        ls "$run"*.png 2>/dev/null | tail -n +2 | xargs -r rm -f
    done
fi
if [ "$PACK" = 1 ]; then
    details=$(mktemp /tmp/issue16-details.XXXXXX.tgz)  # outside $OUT: tar must not read the file it writes
    tar czf "$details" -C "$OUT" runs $(cd "$OUT" && ls stage-*.log doctor.txt prompts.yaml 2>/dev/null) \
        && mv "$details" "$OUT/issue16-details.tgz" \
        && (cd "$OUT" && rm -rf runs stage-*.log doctor.txt prompts.yaml)
fi
echo "== done ($(date -u +%FT%TZ), $((SECONDS - START)) s): $OUT/issue16.json, issue16.png, issue16.txt"
cat "$OUT/issue16.txt"
exit $status
