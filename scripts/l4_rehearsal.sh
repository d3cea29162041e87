#!/usr/bin/env bash
# The L4 host rehearsal on a bare GPU machine (H100/H200 of the device tool): the wheels carried in .whl/
# (scripts/device_wheels.sh: the packages the image lacks and the fluxnb wheel built from this checkout) are
# installed into the machine's own Python environment, as a Workbench user installs fluxnb into the environment
# behind a kernel (README, way A); then scripts/l4_rehearsal.py runs the user's commands with that installed fluxnb,
# from a folder outside the checkout.
#
#   bash scripts/l4_rehearsal.sh                        # both models (~9 minutes)
#   REHEARSAL_MODELS=fp8 bash scripts/l4_rehearsal.sh   # one model a call (the device tool allows 10 minutes)
#
# Results in OUT (default outputs/l4-rehearsal-<time>/): rehearsal.json, the cProfile table of a warm float8 start,
# env.txt and logs.tgz (one log per run, each line stamped with the seconds since that command started).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/outputs/l4-rehearsal-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
work=$(mktemp -d /tmp/l4-out.XXXX)
{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
    nproc; free -g || true; df -h /dev/shm /tmp || true
} > "$OUT/env.txt" 2>&1
ls .whl/fluxnb-*.whl >/dev/null || { echo "no fluxnb wheel in .whl/: run scripts/device_wheels.sh first" >&2; exit 2; }
# pip compiles the packages' bytecode as it installs them, as it does for a user (--no-compile would make every
# process compile diffusers and torchao again: seconds of each command's start)
$PY -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl || exit 1
fluxnb=$(dirname "$($PY -c 'import sys; print(sys.executable)')")/fluxnb
(cd /tmp && $PY -c 'import fluxnb; print("fluxnb installed at", fluxnb.__file__)') | tee -a "$OUT/env.txt"
$PY scripts/l4_rehearsal.py --out "$work" --fluxnb "$fluxnb" --models "${REHEARSAL_MODELS:-fp8,bnb}" ${REHEARSAL_ARGS:-}
status=$?
cp "$work"/rehearsal.json "$work"/*profile.txt "$OUT"/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$work" --exclude='*.prof' .
exit $status
