"""Where the repository's own files are: the tests of a checkout read them (scripts/, results/, requirements/);
fluxnb itself never does (the product is the wheel: fluxnb/core/packaged.py)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
