"""`fluxnb notebooks DIR`: copy the notebooks shipped with fluxnb into a working folder (never overwriting)."""

from __future__ import annotations

import argparse

from ..runs.runner import KERNEL_DISPLAY_NAME, KERNEL_NAME
from ..runs.workspace import copy_notebooks
from ..ui.display import shown_path


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("notebooks", help="copy the notebooks shipped with fluxnb into a working folder")
    parser.add_argument("folder", help="where the copies go (made if missing); a notebook run in JupyterLab writes "
                        "its outputs/ beside it")
    parser.add_argument("--kernel", help="an installed Jupyter kernel the copies open on, e.g. the one of the "
                        f"environment you installed fluxnb into (default: {KERNEL_NAME!r}, \"{KERNEL_DISPLAY_NAME}\")")
    return parser


def run(args: argparse.Namespace) -> int:
    written = copy_notebooks(args.folder, args.kernel)
    if written:
        print(f"copied {len(written)} file(s) into {shown_path(args.folder)}:")
        print("\n".join(f"  {shown_path(path)}" for path in written))
    else:
        print(f"{shown_path(args.folder)} already holds the notebooks of this fluxnb; nothing to copy")
    kernel = args.kernel or KERNEL_NAME
    print(f"Open them in JupyterLab; they run on the kernel {kernel!r}. Headless: fluxnb run "
          f"{shown_path(args.folder)}/01_text_to_image.ipynb (or just 01_text_to_image)")
    return 0
