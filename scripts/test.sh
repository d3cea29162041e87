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
# The browser lane (tests/browser) drives JupyterLab through Debian's chromium with Playwright (pinned in
# requirements/default.txt; Playwright's own browser download is not used). Installed here when missing.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "installing Debian's chromium for the browser lane"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
echo "== guide lane: $(.venv-guide/bin/python -c 'import diffusers, transformers; print("diffusers", diffusers.__version__, "transformers", transformers.__version__)')"
# The browser lane and the fault tests run in the default lane only: what they check (JupyterLab and the pages a
# person sees; run-folder locks, kills, full disks, multi-process batches) does not depend on the diffusers /
# transformers line, and running them once keeps CI inside its time. The guide lane runs every unit and notebook test.
.venv-guide/bin/python -m pytest -p no:cacheprovider -m "not gpu and not browser and not faults" "$@"
echo "== default lane: $(.venv/bin/python -c 'import diffusers, transformers; print("diffusers", diffusers.__version__, "transformers", transformers.__version__)')"
.venv/bin/python -m pytest -p no:cacheprovider "$@"
