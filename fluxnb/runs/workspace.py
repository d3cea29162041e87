"""A working folder for the notebooks: `fluxnb notebooks DIR` copies the ones shipped with fluxnb there.

An installed fluxnb has no repository checkout: its notebooks live inside the package. A person works on copies
in a folder of their own (a run in JupyterLab writes its outputs/ beside the notebook), so the packaged ones stay
as shipped and an upgrade of fluxnb never meets a notebook the person edited. The copy never overwrites: a file
already there with other content (someone's edits) stops the copy before anything is written.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..core.errors import InputError
from ..core.packaged import ASSETS_DIR, NOTEBOOKS_DIR
from .runner import KERNEL_NAME, check_kernel


def _packaged_files() -> list[tuple[Path, Path]]:
    """(source, path relative to the working folder) for every notebook and asset fluxnb ships."""
    files = [(p, Path(p.name)) for p in sorted(NOTEBOOKS_DIR.glob("*.ipynb"))]
    files += [(p, Path(ASSETS_DIR.name) / p.name) for p in sorted(ASSETS_DIR.iterdir()) if p.is_file()]
    return files


def _with_kernel(data: bytes, kernel: str) -> bytes:
    """The notebook with its kernelspec set to the installed kernel `kernel` (its display name from Jupyter)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel)
    notebook = json.loads(data)
    notebook.setdefault("metadata", {})["kernelspec"] = {"name": kernel, "display_name": spec.display_name,
                                                         "language": spec.language}
    return (json.dumps(notebook, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def copy_notebooks(folder: str | os.PathLike, kernel: str | None = None) -> list[Path]:
    """Copy the packaged notebooks (and their assets/) into `folder`; return the files written.

    Args:
        folder: the working folder (made when missing).
        kernel: an installed Jupyter kernel the copies open on (e.g. a Workbench conda environment's); None keeps
            the project kernel "fluxnb".

    Raises:
        InputError: `folder` is a file; a file there differs from the packaged one (nothing is written then); a
            link stands where a copy goes; `kernel` is not an installed kernel.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder.", fix="give a folder for the notebooks (made if missing)")
    check_kernel(kernel)
    plan, same, differ = [], [], []
    for source, relative in _packaged_files():
        data = source.read_bytes()
        if kernel and kernel != KERNEL_NAME and source.suffix == ".ipynb":
            data = _with_kernel(data, kernel)
        target = folder / relative
        if target.is_symlink():
            differ.append(f"{target} (a symbolic link)")
        elif target.exists():
            (same if target.is_file() and target.read_bytes() == data else differ).append(str(target))
        else:
            plan.append((target, data))
    if differ:
        raise InputError(f"{len(differ)} file(s) in {folder} differ from the notebooks fluxnb would copy there: "
                         + ", ".join(differ) + ". Nothing was copied, so your edits are kept.",
                         fix="choose another folder, or move those files away first")
    written = []
    for target, data in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "xb") as handle:  # never replaces a file (nor a link) that appeared meanwhile
                handle.write(data)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise InputError(f"{target} appeared while copying; it was left as it is.",
                                 fix="run the command again") from None
            raise InputError(f"cannot write {target}: {exc.strerror or exc}.",
                             fix="choose a folder you can write to") from None
        written.append(target)
    return written
