#!/usr/bin/env bash
# The whole test suite, in both supported lanes (README: "the tests"; .ci/run calls exactly this).
#   default lane: requirements/default.txt (diffusers 0.42 / transformers 5) + the optional extras (extras.txt)
#   guide lane:   requirements/guide.txt   (the guide's verified diffusers 0.34 / transformers 4.56)
# Extra arguments go to pytest in both lanes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh default
scripts/setup.sh guide
.venv/bin/python -m pip --disable-pip-version-check -q install -r requirements/extras.txt  # optional extras, tested
echo "== guide lane: $(.venv-guide/bin/python -c 'import diffusers, transformers; print("diffusers", diffusers.__version__, "transformers", transformers.__version__)')"
.venv-guide/bin/python -m pytest -p no:cacheprovider "$@"
echo "== default lane: $(.venv/bin/python -c 'import diffusers, transformers; print("diffusers", diffusers.__version__, "transformers", transformers.__version__)')"
.venv/bin/python -m pytest -p no:cacheprovider "$@"
