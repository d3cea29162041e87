"""Each notebook as a person sees it: opened in JupyterLab (headless Chromium), Run All, the forms clicked.

For every notebook: it opens on the project kernel "Python 3 (fluxnb)" and Run All finishes without an error output.
00 shows its verdict line; 04 shows exactly one chart; the forms of 01 and 02 write a new PNG into the run folder
and its manifest and show it, move their progress bar step by step, show a bad value's message and generate
nothing, render a Korean caption, and stop after the current image. Screenshots: outputs/browser/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from fluxnb.runs.runner import KERNEL_DISPLAY_NAME
from tests.paths import REPO_ROOT
from tests.waiting import wait_for

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
    def written() -> nbformat.NotebookNode | None:
        """The notebook once the save has replaced it and it reads whole, the same on two reads in a row."""
        if path.stat().st_mtime_ns == before:
            return None
        try:
            first = nbformat.read(path, as_version=4)
        except Exception:  # noqa: BLE001 - mid-write: read again
            return None
        return first if nbformat.read(path, as_version=4) == first else None

    return wait_for(written, seconds=60, what=f"JupyterLab to save {name}.ipynb")


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
    stderr = "".join(o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream" and o.name == "stderr")
    print(f"{name} stderr:", stderr)
    # the known-harmless lines the load cells used to print in pink (fluxnb.core.quiet)
    assert "requires torchvision (not installed)" not in stderr and "gemm_4bit_forward" not in stderr
    assert executed_everything(nb)
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text=re.compile("Traceback|Error:")).count() == 0
    return nb


# -- the notebooks without a form -------------------------------------------------------------------------------


def test_00_setup_verification_shows_its_verdict(page, lab, shot):
    nb = check_opened_and_ran(page, lab, shot, "00_setup_verification")
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    printed = "".join(o.get("text", "") for o in last.outputs)
    assert printed.startswith("ready: flux-tiny"), printed  # the verdict line, first in the last cell
    verdict = page.locator(".jp-OutputArea-output", has_text=printed.splitlines()[0]).last
    verdict.scroll_into_view_if_needed()
    assert verdict.is_visible()
    shot(page, "verdict")


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


# -- the forms of 01 and 02 -------------------------------------------------------------------------------------


class Form:
    """The Generate form of the notebook on the page, driven as a person drives it."""

    def __init__(self, page):
        self.page = page
        self.root = page.locator(".fluxnb-form").last
        self.root.scroll_into_view_if_needed()
        shown = Path(self.root.locator(".fluxnb-header code").inner_text().strip())
        self.run_dir = shown if shown.is_absolute() else REPO_ROOT / shown  # outputs/... (display.shown_path)
        self.status = self.root.locator(".fluxnb-status")
        self.output = self.root.locator(".fluxnb-output")

    def _labelled(self, kind: str, label: str):
        return self.root.locator(f".{kind}", has=self.page.locator("label", has_text=re.compile(f"^{label}$")))

    def set_slider(self, label: str, value) -> None:
        readout = self._labelled("widget-slider", label).locator(".widget-readout")
        readout.click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.type(str(value))
        self.page.keyboard.press("Enter")
        self.page.wait_for_function("([el, v]) => el.textContent.trim() === v",
                                    arg=[readout.element_handle(), str(value)])

    def set_text(self, label: str, value) -> None:
        box = self._labelled("widget-text", label).locator("input")
        box.fill(str(value))
        box.press("Enter")

    def select(self, label: str, value) -> None:
        self._labelled("widget-dropdown", label).locator("select").select_option(str(value))

    def set_prompt(self, text: str) -> None:
        self.root.locator("textarea").fill(text)

    def manifest_files(self) -> list[str]:
        manifest = json.loads((self.run_dir / "manifest.json").read_text())
        return [entry["file"] for entry in manifest["images"]]

    def pngs(self) -> list[str]:
        return sorted(p.name for p in self.run_dir.glob("*.png"))

    def watch_status(self) -> None:
        """Record every text the progress line shows from now on (a MutationObserver in the page)."""
        self.page.evaluate("""el => {
            window.__fluxnbStatus = [];
            new MutationObserver(() => window.__fluxnbStatus.push(el.textContent))
                .observe(el, {subtree: true, childList: true, characterData: true});
        }""", self.status.element_handle())

    def seen_status(self) -> list[str]:
        return self.page.evaluate("() => window.__fluxnbStatus")

    def click(self, name: str) -> None:
        self.root.locator("button", has_text=re.compile(f"^\\s*{name}\\s*$")).click()

    def generate(self) -> None:
        """Press Generate, recording the progress line from before the click (wait_finished waits for its end)."""
        self.watch_status()
        self.click("Generate")

    def wait_finished(self, timeout: float = 180_000) -> str:
        """The progress line's final text of the generation started by generate() (not the one before it)."""
        self.page.wait_for_function("() => window.__fluxnbStatus.some(t => /^(done|stopped):/.test(t.trim()))",
                                    timeout=timeout)
        self.page.wait_for_function("el => !el.querySelector('button').disabled", arg=self.root.element_handle())
        return self.status.inner_text().strip()


def exercise_form(page, lab, shot, name: str) -> Form:
    check_opened_and_ran(page, lab, shot, name)
    form = Form(page)
    assert form.output.inner_text().strip() == ""  # no empty box or message before the first click
    assert form.root.locator(".fluxnb-progress").is_hidden()
    shot(page, "form", form.root)
    before = form.manifest_files()
    assert before and form.pngs() == sorted(before)  # Run All made the notebook's own image

    # 1. a multi-step generation: the bar moves step by step, new PNGs land in the manifest and are shown
    form.set_prompt("a lighthouse at dusk\nthe same lighthouse in a storm")
    form.set_slider("steps", 8)
    form.select("width", 128)
    form.select("height", 128)
    form.generate()
    # (image-to-image runs strength x steps of them: 4 of 8 at the notebook's strength 0.6)
    page.wait_for_function("el => /step \\d+\\/\\d+/.test(el.textContent)", arg=form.status.element_handle())
    shot(page, "generating", form.root)
    assert form.wait_finished().startswith("done: 2 image(s)")
    steps = {m.group(1) for text in form.seen_status() for m in [re.search(r"step (\d+)/\d+", text)] if m}
    assert len(steps) >= 2, form.seen_status()
    assert any("elapsed" in text and "left" in text for text in form.seen_status())
    after = form.manifest_files()
    new = [f for f in after if f not in before]
    assert len(new) == 2 and form.pngs() == sorted(after)
    assert form.output.locator("img").count() == 1  # the grid of the new images
    for file in new:
        assert file in form.output.inner_text()
    shot(page, "generated", form.root)

    # 2. a bad value: its message, and nothing generated
    form.set_text("seed", -1)
    form.click("Generate")
    form.output.get_by_text("parameter `seed`").wait_for()
    text = form.output.inner_text()
    assert text.startswith("error: parameter `seed`: must be") and "Nothing was generated" in text
    assert "Traceback" not in text
    assert form.root.locator(".fluxnb-progress").is_hidden()  # no leftover bar from the last run
    assert form.manifest_files() == after and form.pngs() == sorted(after)
    shot(page, "bad-value", form.root)
    form.set_text("seed", 0)

    # 3. a Korean prompt: its caption renders (Noto Sans CJK), no missing-glyph warning anywhere on the page
    form.set_prompt(KOREAN)
    form.set_slider("steps", 2)
    form.select("width", 64)
    form.select("height", 64)
    form.generate()
    assert form.wait_finished().startswith("done: 1 image(s)")
    assert form.output.locator("img").count() == 1
    assert "missing from font" not in page.inner_text("body") and "Glyph" not in page.inner_text("body")
    shot(page, "korean-caption", form.output)
    made = form.manifest_files()
    assert len(made) == len(after) + 1

    # 4. Stop during a batch: it ends after the current image; manifest and files agree
    form.set_prompt("a fox in the snow")
    form.set_slider("steps", 20)  # long enough per image (about 2 s at 512x512 on 2 CPU cores) to click Stop in
    form.select("width", 512)
    form.select("height", 512)
    form.set_slider("images/prompt", 4)
    form.generate()
    page.wait_for_function("el => /image 1 of 4 .*step \\d+\\/\\d+/.test(el.textContent)",
                           arg=form.status.element_handle())
    form.click("Stop")
    final = form.wait_finished()
    shot(page, "stopped", form.root)
    assert final.startswith("stopped:"), final
    stopped = [f for f in form.manifest_files() if f not in made]
    assert 1 <= len(stopped) < 4, stopped
    assert form.pngs() == sorted(form.manifest_files())  # every listed file exists, no file unlisted
    assert f"stopped after {len(stopped)} of 4 image(s)" in form.output.inner_text()
    return form


def test_01_text_to_image_form(page, lab, shot):
    form = exercise_form(page, lab, shot, "01_text_to_image")
    assert form.run_dir.parent == lab.outputs


def test_02_image_to_image_form_with_an_upload(page, lab, shot, tmp_path: Path):
    from PIL import Image

    form = exercise_form(page, lab, shot, "02_image_to_image")
    picture = tmp_path / "my photo.png"
    Image.new("RGB", (120, 90), (200, 60, 40)).save(picture)
    with page.expect_file_chooser() as chooser:  # ipywidgets' upload button opens the browser's file dialog
        form.root.locator("button", has_text="upload").click()
    chooser.value.set_files(str(picture))
    path_box = form._labelled("widget-text", "init_image").locator("input")
    page.wait_for_function("el => el.value.endsWith('my_photo.png')", arg=path_box.element_handle())
    saved = form.run_dir / "inputs" / "my_photo.png"
    assert saved.read_bytes() == picture.read_bytes()
    assert "relative paths are read from" in form.root.inner_text()
    form.set_prompt("a red square, painted")
    form.set_slider("images/prompt", 1)
    form.set_slider("steps", 4)
    form.select("width", 128)
    form.select("height", 128)
    form.generate()
    assert form.wait_finished().startswith("done: 1 image(s)")
    grid = form.output.locator("img")
    assert grid.count() == 1
    box = grid.bounding_box()
    assert box["width"] > 1.5 * box["height"]  # the starting picture beside the result
    manifest = json.loads((form.run_dir / "manifest.json").read_text())
    assert manifest["images"][-1]["init_image"] == str(saved)
    assert manifest["images"][-1]["strength"] == 0.6  # as the slider shows it, not 0.6000000000000001
    shot(page, "upload-result", form.root)
