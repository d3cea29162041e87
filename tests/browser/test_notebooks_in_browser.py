"""Each notebook as a person sees it: opened in JupyterLab (headless Chromium), Run All, the forms clicked.

For every notebook: it opens on the project kernel "Python 3 (fluxnb)" and Run All finishes without an error output.
00 shows its verdict line; 04 shows exactly one chart; the forms of 01 and 02 write a new PNG into the run folder
and its manifest and show it, move their progress bar step by step, show a bad value's message and generate
nothing, render a Korean caption, and stop after the current image. Screenshots: outputs/browser/.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest

from fluxnb.runner import KERNEL_DISPLAY_NAME

KOREAN = "붉은 여우, 눈 속의 수채화"


# -- driving JupyterLab --------------------------------------------------------------------------------------------


def open_notebook(page, lab, name: str) -> None:
    page.goto(lab.notebook_url(name))
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    # the kernel the notebook names starts by itself (no kernel dialog) and is the project's
    page.wait_for_function(
        "name => [...document.querySelectorAll('.jp-NotebookPanel-toolbar *')]"
        ".some(e => e.children.length === 0 && e.textContent.trim() === name)", arg=KERNEL_DISPLAY_NAME)
    wait_idle(page)


def wait_idle(page, timeout: float = 300_000) -> None:
    page.wait_for_selector(".jp-NotebookPanel-toolbar [data-status='idle']", timeout=timeout)


def run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    # every code cell gets an execution count, or the run stopped at an error (later cells stay unexecuted)
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                .map(p => p.textContent.trim());
            if (prompts.some(p => p.includes('*'))) return false;
            return prompts.length > 0 && /\\d/.test(prompts[0]);
        }""", timeout=300_000)
    wait_idle(page)


def saved_notebook(page, lab, name: str) -> nbformat.NotebookNode:
    """Save (Ctrl+S) and read back what the browser holds: every output with its real type."""
    path = lab.root / "notebooks" / f"{name}.ipynb"
    before = path.stat().st_mtime_ns
    page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 60
    while path.stat().st_mtime_ns == before:
        assert time.monotonic() < deadline, "the notebook was not saved"
        time.sleep(0.2)
    time.sleep(0.5)
    return nbformat.read(path, as_version=4)


def errors_of(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]


def executed_everything(nb: nbformat.NotebookNode) -> bool:
    return all(c.execution_count for c in nb.cells if c.cell_type == "code")


def check_opened_and_ran(page, lab, shot, name: str) -> nbformat.NotebookNode:
    open_notebook(page, lab, name)
    shot(page, "opened")
    run_all(page)
    shot(page, "ran-all")
    nb = saved_notebook(page, lab, name)
    assert nb.metadata.kernelspec.name == "fluxnb"
    assert errors_of(nb) == []
    assert executed_everything(nb)
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text=re.compile("Traceback|Error:")).count() == 0
    return nb


# -- the notebooks without a form -------------------------------------------------------------------------------


def test_00_setup_verification_shows_its_verdict(page, lab, shot):
    nb = check_opened_and_ran(page, lab, shot, "00_setup_verification")
    verdict = page.locator(".jp-OutputArea-output", has_text="ready: nothing blocks flux-tiny").last
    verdict.scroll_into_view_if_needed()
    assert verdict.is_visible()
    shot(page, "verdict")
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "ready: nothing blocks flux-tiny" in printed


def test_03_troubleshooting_replay_runs(page, lab, shot):
    nb = check_opened_and_ran(page, lab, shot, "03_troubleshooting_replay")
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert html.count("Attempt ") >= 6
    assert "(cpu, 0.00 s)" not in page.content()


def test_04_benchmark_shows_exactly_one_chart(page, lab, shot):
    nb = check_opened_and_ran(page, lab, shot, "04_benchmark")
    charts = page.locator(".jp-OutputArea-output img")
    assert charts.count() == 1
    charts.first.scroll_into_view_if_needed()
    shot(page, "chart", charts.first)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
