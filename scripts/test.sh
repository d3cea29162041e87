#!/usr/bin/env bash
# The whole test suite, in both supported lanes (README: "the tests"; .ci/run calls exactly this).
#   default lane: requirements/default.txt (diffusers 0.42 / transformers 5) + the test tools (test.txt), JupyterLab
#                 (lab.txt) and the optional extras (extras.txt): every test, the browser lane and the installed
#                 product included
#   guide lane:   requirements/guide.txt (the guide's verified diffusers 0.34 / transformers 4.56) + the test tools:
#                 the tests marked `stack`, those whose outcome depends on the diffusers / transformers line
# Each lane runs on every core (pytest-xdist; FLUXNB_TEST_WORKERS=N to choose). Extra arguments go to pytest in both.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
pip_q=(-m pip --disable-pip-version-check -q)
scripts/setup.sh default
scripts/setup.sh guide
.venv/bin/python "${pip_q[@]}" install -r requirements/test.txt -r requirements/lab.txt -r requirements/extras.txt
.venv-guide/bin/python "${pip_q[@]}" install -r requirements/test.txt

# The browser lane (tests/browser) drives JupyterLab through Debian's chromium with Playwright (pinned in
# requirements/extras.txt; Playwright's own browser download is not used). Installed here when missing, waiting for
# another apt/dpkg to finish (scripts/apt_get.sh).
. scripts/apt_get.sh
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "installing Debian's chromium for the browser lane"
  apt_get update -qq
  apt_get install -y -qq chromium
fi

workers=(-n "${FLUXNB_TEST_WORKERS:-auto}" --dist loadfile)
echo "== guide lane: $(.venv-guide/bin/python -c 'import diffusers, transformers; print("diffusers", diffusers.__version__, "transformers", transformers.__version__)')"
.venv-guide/bin/python -m pytest -p no:cacheprovider "${workers[@]}" -m "stack and not gpu" "$@"
echo "== default lane: $(.venv/bin/python -c 'import diffusers, transformers; print("diffusers", diffusers.__version__, "transformers", transformers.__version__)')"
.venv/bin/python -m pytest -p no:cacheprovider "${workers[@]}" "$@"
