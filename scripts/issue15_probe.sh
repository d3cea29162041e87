#!/usr/bin/env bash
# One command on a bare GPU machine (~9 minutes): the transformer-only variants of the speed work, one process each
# (scripts/compile_probe.py, full-size random weights, 4096 + 512 tokens), as JSON lines in $OUT/probe.jsonl.
#   attention kernels alone (flash / cuDNN / memory-efficient SDPA at FLUX's shape), then float8 per-row regional
#   compile: default attention vs cuDNN attention, max-autotune, CUDA graphs (reduce-overhead), coordinate-descent
#   tuning; cold first call, and warm (a second process sharing the compile cache) where it decides something.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/outputs/issue15-probe-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
. scripts/carried_wheels.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/env.txt"
$PY -c "import torch, diffusers, torchao, triton; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'torchao', torchao.__version__, 'triton', triton.__version__, 'cudnn', torch.backends.cudnn.version())" 2>/dev/null | tee -a "$OUT/env.txt"
CACHE=/tmp/probe-cache
probe() {  # TIMEOUT [--twice] VARIANT...: one cache folder per call, so that each cold run is cold
    local timeout=$1; shift
    $PY scripts/compile_probe.py --full-size --timeout "$timeout" --cache-dir "$CACHE/$RANDOM$RANDOM" "$@" 2>&1 \
        | grep '^{' | tee -a "$OUT/probe.jsonl"
}
SET=${PROBE_SET:-5}
if [ "$SET" = 1 ]; then  # first call (run 14): attention kernels, cuDNN attention, autotune
    probe 60 attention
    probe 100 --twice fp8dq-regional@_native_cudnn
    probe 80 fp8dq-regional
    probe 220 --twice fp8dq-regional-at@_native_cudnn
elif [ "$SET" = 2 ]; then  # second call (run 15; its -cd suffix is gone: the record tunes now): where a
    export PROBE_PROFILE=1    # step's time goes (profiler), per-tensor scales, CUDA graphs, tuning
    probe 100 --twice fp8dq-regional
    probe 80 fp8pt-regional
    probe 80 --outliers 50,8 fp8pt-regional
    probe 80 --outliers 50,8 fp8dq-regional
    probe 90 fp8dq-regional-ro
    probe 60 bf16-regional
    probe 150 fp8dq-regional-cd  # coordinate-descent tuning: since then the record's own setting
elif [ "$SET" = 3 ]; then  # third call (run 17): the record's coordinate-descent tuning, cold and warm, with and without inductor's
      # static CUDA launcher; the whole forward in one CUDA graph
    export PROBE_CUDA_GRAPH=1
    probe 130 --twice fp8dq-regional
    PROBE_INDUCTOR='{"use_static_cuda_launcher": false}' probe 130 --twice fp8dq-regional
elif [ "$SET" = 4 ]; then  # fourth call (run 18): the one-row layers as fused int8 matvecs (fluxnb/models/backends/matvec.py), no tuning
    export PROBE_PROFILE=1
    probe 100 --twice fp8dq-regional
    probe 80 int8dq-regional
elif [ "$SET" = 5 ]; then  # fifth call (run 20): the VAE decoder alone (channels_last, compiled)
    probe 200 vae
elif [ "$SET" = 6 ]; then  # sixth call (run 22): the one-row layers' Triton kernel (tile shapes, then in the step
      # against run 18's fused multiply-and-sum), fluxnb's CUDA graph of the whole forward, the VAE with cuDNN benchmark
    probe 90 matvec
    export PROBE_CUDA_GRAPH=1
    PROBE_MATVEC=fused probe 120 fp8dq-regional
    PROBE_PROFILE=1 probe 120 --twice fp8dq-regional
    probe 90 vae
elif [ "$SET" = 7 ]; then  # seventh call (run 23): persistent reductions up to 16384 (inductor's multi-kernel: one pass
      # for the float8 quantization of rows of 12288-15360), picked by benchmark (1) or forced (2); the record's
      # settings as they are beside them; all with the CUDA graph
    export PROBE_CUDA_GRAPH=1 PROBE_PROFILE=1
    probe 120 fp8dq-regional
    PROBE_INDUCTOR='{"triton.multi_kernel": 1}' probe 150 --twice fp8dq-regional
    PROBE_INDUCTOR='{"triton.multi_kernel": 2}' probe 150 fp8dq-regional
elif [ "$SET" = 8 ]; then  # eighth call (run 25): the GELU branches' float8 row quantization in one pass
      # (fluxnb/models/backends/fp8_rows.py) alone and in the step, against torchao's own; with the CUDA graph
    probe 90 fp8rows
    export PROBE_CUDA_GRAPH=1 PROBE_PROFILE=1
    PROBE_FP8_ROWS=0 probe 120 fp8dq-regional
    probe 120 --twice fp8dq-regional
fi
echo "probe done: $OUT/probe.jsonl"
