"""`python -m fluxnb.cli ...`: the same as the `fluxnb` command (the GPU lane runs it this way)."""

import sys

from . import main

sys.exit(main())
