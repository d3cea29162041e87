"""The `fluxnb` command: run notebooks headlessly, or generate without Jupyter.

One module per subcommand (run, generate, doctor, diagnose, bench, replay, cache, notebooks, workers), each with
`add_parser(sub)` and `run(args)`. Errors fluxnb raises on purpose are printed as one block by `render_error` (exit
2 for bad input: InputError and its subclasses; 1 when a run failed); anything else keeps its traceback, because that
is a bug to report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import FluxnbError, InputError, render_error
from ..models.config import CONFIG_ENV
from . import bench, cache, diagnose, doctor, generate, notebooks, replay, run, workers

SUBCOMMANDS = (run, generate, doctor, diagnose, bench, replay, cache, notebooks, workers)
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxnb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        command = module.add_parser(sub)
        command.add_argument("--config", type=Path, help=f"model config file (default: ${CONFIG_ENV}, else "
                             "./model_config.yaml, else the one shipped with fluxnb; `fluxnb doctor` says which)")
        command.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _config_from(args.config):
        try:
            return args.func(args)
        except InputError as exc:  # bad parameters, files, folders: the user can fix them
            print(f"fluxnb: {render_error(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except FluxnbError as exc:
            print(f"fluxnb: {render_error(exc)}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("fluxnb: interrupted; finished images and the manifest are kept", file=sys.stderr)
            return EXIT_INTERRUPTED


@contextmanager
def _config_from(path: Path | None) -> Iterator[None]:
    """--config, for the command and the kernels, ranks and actors it starts (they inherit $FLUXNB_CONFIG); the
    variable is restored afterwards, for a caller that runs main() in its own process (a test, a notebook)."""
    if path is None:
        yield
        return
    saved = os.environ.get(CONFIG_ENV)
    os.environ[CONFIG_ENV] = str(Path(path).absolute())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(CONFIG_ENV, None)
        else:
            os.environ[CONFIG_ENV] = saved
