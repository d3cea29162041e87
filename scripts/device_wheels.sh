#!/usr/bin/env bash
# Fill the git-ignored .whl/ with what a GPU machine without network needs to run fluxnb's GPU scripts
# (gpu_lane.sh, l4_rehearsal.sh): the packages its image lacks, as Python 3.12 manylinux wheels, at the versions
# of requirements/default.txt, extras.txt and test.txt, and the fluxnb wheel built from this checkout (the
# rehearsal installs the product as users get it). Run here, before a device call that carries .whl.
#
#   scripts/device_wheels.sh            # CUDA 13.0 (the device image's torch is cu130)
#   BNB_CUDA=126 scripts/device_wheels.sh
#
# The device image (KINDS.md, read 2026-11-17) has torch, transformers, accelerate, huggingface_hub, safetensors,
# matplotlib, pytest, pytest-xdist, hypothesis, psutil, nvidia-ml-py...; not diffusers, bitsandbytes, torchao, the
# Jupyter stack, the CJK font, import-linter or ruff. The kernel runs without debugpy and jedi, and headless runs need
# no widget front-end assets (widgetsnbextension, jupyterlab_widgets): those are left out to stay under the 64 MiB a
# call may carry. bitsandbytes' wheel holds a library per CUDA version (43 MB); only BNB_CUDA's and the CPU one are
# kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dest=.whl
cuda=${BNB_CUDA:-130}
rm -rf "$dest" && mkdir -p "$dest"
pins() {  # NAME==VERSION from the locks for each name (names compared as pip does: case, - and _ alike)
  python3 - "$@" <<'PY'
import re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
locked = {}
for lock in ("requirements/default.txt", "requirements/extras.txt", "requirements/test.txt"):
    for line in open(lock, encoding="utf-8"):
        line = line.split("#")[0].strip()
        if "==" in line:
            locked.setdefault(norm(line.split("==")[0]), line)
print("\n".join(locked.get(norm(name), name) for name in sys.argv[1:]))  # not pinned: the newest
PY
}
packages=(diffusers bitsandbytes torchao peft manimgx-fonts-cjk papermill nbclient nbformat fastjsonschema jsonschema
  jsonschema-specifications referencing rpds-py entrypoints tenacity ipykernel ipython ipython-pygments-lexers comm
  jupyter-client jupyter-core traitlets pyzmq tornado matplotlib-inline nest-asyncio2 pexpect ptyprocess
  prompt-toolkit wcwidth stack-data executing asttokens pure-eval decorator platformdirs ipywidgets import-linter
  grimp ruff ipycanvas sageattention
  nvidia-cudnn-frontend==1.14.0)  # the `cudnn-fp8` extra (attention: cudnn-fp8; scripts/issue25_probe.py): the
  # release measured, without the CuTe DSL dependencies (1.32 needs nvidia-cutlass-dsl)
mapfile -t specs < <(pins "${packages[@]}")  # decorator is not pinned (ipython's dependency): the newest
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d "$dest" "${specs[@]}"

# bitsandbytes: keep the CPU library and BNB_CUDA's, drop the others (and their RECORD lines)
bnb=$(ls "$dest"/bitsandbytes-*.whl)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && python3 -m zipfile -e "$root/$bnb" unpacked)
find "$work/unpacked/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name "libbitsandbytes_cuda${cuda}.so" \
  ! -name 'libbitsandbytes_cpu.so' -delete
record=$(ls "$work"/unpacked/bitsandbytes-*.dist-info/RECORD)
grep -v -E "libbitsandbytes_.*\.so" "$record" > "$record.kept" || true
grep -E "libbitsandbytes_(cpu|cuda${cuda})\.so" "$record" >> "$record.kept" || true
mv "$record.kept" "$record"
rm "$bnb"
(cd "$work/unpacked" && python3 -m zipfile -c "$root/$bnb" .)

# the product itself, built from this checkout
python3 -m pip wheel -q --no-deps -w "$dest" .
rm -rf build fluxnb.egg-info
du -sh "$dest"
ls "$dest"
