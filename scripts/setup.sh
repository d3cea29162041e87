#!/usr/bin/env bash
# Create or update a virtual environment with fluxnb and its pinned stack; cheap when nothing changed.
#
#   scripts/setup.sh            the default stack into .venv        (README: the main job, the tests)
#   scripts/setup.sh guide      the guide's verified line into .venv-guide (second CI lane)
#
# torch is installed first and separately: FLUXNB_TORCH (default torch==2.13.0) from PyPI, or from
# FLUXNB_TORCH_INDEX_URL when set. PyPI's current torch wheels are CUDA 13 builds needing an R580+
# NVIDIA driver; on an older driver (many Workbench images) use PyTorch's cu126 index, e.g.
#   FLUXNB_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 scripts/setup.sh
# (`fluxnb doctor` explains a mismatch.)
set -euo pipefail
lane=${1:-default}
root=$(cd "$(dirname "$0")/.." && pwd)
case "$lane" in
  default) venv="$root/.venv" ;;
  guide) venv="$root/.venv-guide" ;;
  *) echo "usage: scripts/setup.sh [default|guide]" >&2; exit 2 ;;
esac
lock="$root/requirements/$lane.txt"
torch_spec=${FLUXNB_TORCH:-torch==2.13.0}
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "fluxnb needs Python 3.10 or newer; $python is $("$python" --version 2>&1). Set PYTHON=python3.11 (for example)." >&2
  exit 2
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# The project kernel for JupyterLab: the notebooks name "fluxnb" ("Python 3 (fluxnb)"), i.e. this .venv, never a
# generic python3 (on a Workbench instance that is the system Python, without fluxnb). Default lane only.
register_kernel() {
  if [ "$lane" = default ] && [ -z "${FLUXNB_NO_KERNEL:-}" ]; then
    "$venv/bin/python" -m ipykernel install --user --name fluxnb --display-name "Python 3 (fluxnb)" >/dev/null
  fi
}

stamp="$venv/.fluxnb-setup"
want="$(cat "$lock" "$root/pyproject.toml" | sha256sum | cut -c1-16) $torch_spec ${FLUXNB_TORCH_INDEX_URL:-}"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  register_kernel
  exit 0
fi
echo "setting up $venv ($lane stack: requirements/$lane.txt)"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null || [ -n "${FLUXNB_TORCH:-}${FLUXNB_TORCH_INDEX_URL:-}" ]; then
  "${pip[@]}" install "$torch_spec" ${FLUXNB_TORCH_INDEX_URL:+--index-url "$FLUXNB_TORCH_INDEX_URL"}
fi
"${pip[@]}" install -r "$lock"
"${pip[@]}" install --no-deps -e "$root"
register_kernel
echo "$want" > "$stamp"
