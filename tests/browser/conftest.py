"""The browser lane: a real JupyterLab (started here, on 127.0.0.1, a random port and token) driven through Debian's
headless Chromium by Playwright, with the project kernel registered into a temporary Jupyter data directory.

The notebooks are copied into a temporary folder that JupyterLab serves, so that nothing a test does (autosave, a
saved notebook with outputs) can touch the committed notebooks. Screenshots of each state go to outputs/browser/
(not committed) for a person to look at.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxnb.runs.runner import KERNEL_DISPLAY_NAME, KERNEL_NAME
from fluxnb.runs.workspace import copy_notebooks
from tests.paths import REPO_ROOT

SCREENSHOTS = REPO_ROOT / "outputs" / "browser"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
# Flags for a headless Chromium that must not reach the network: no GPU, no QUIC, no first-run UI, no background
# updates or sync (the user data directory is a fresh temporary one, given by Playwright's persistent context).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("the browser lane needs Debian's chromium (Playwright's own browser download is not used): "
                       "apt-get install -y chromium (scripts/test.sh does it).")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab: its URL, token, served folder, and where the notebooks' run folders go."""

    def __init__(self, url: str, token: str, root: Path, outputs: Path, process: subprocess.Popen):
        self.url, self.token, self.root, self.outputs, self.process = url, token, root, outputs, process

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/notebooks/{name}.ipynb?token={self.token}&reset"

    def shutdown_kernels(self) -> None:
        for kernel in self.api("/api/kernels"):
            self.api(f"/api/kernels/{kernel['id']}", method="DELETE")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("lab")
    root, data, config, runtime = (base / name for name in ("root", "data", "config", "runtime"))
    # run folders under the project's outputs/ (not committed), shown by the forms as outputs/browser/runs-.../...
    outputs = SCREENSHOTS / f"runs-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    copy_notebooks(root / "notebooks")  # what a person does: `fluxnb notebooks DIR`
    # The news toast would cover part of the page in screenshots.
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {**os.environ, "JUPYTER_DATA_DIR": str(data), "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_RUNTIME_DIR": str(runtime), "FLUXNB_OUTPUTS": str(outputs), "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("JUPYTER_PATH", None)
    # The project kernel, registered exactly as the README's setup step does (--user = JUPYTER_DATA_DIR here).
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", KERNEL_NAME,
                    "--display-name", KERNEL_DISPLAY_NAME], env=env, check=True, capture_output=True)
    assert (data / "kernels" / KERNEL_NAME / "kernel.json").is_file()
    token = secrets.token_hex(24)
    port = _free_port()
    log = open(base / "jupyterlab.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],  # CI containers run as root
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    running = Lab(f"http://127.0.0.1:{port}", token, root, outputs, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                running.api("/api/status")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (base / "jupyterlab.log").read_text()[-3000:]
                    raise RuntimeError(f"JupyterLab did not start: {log_text}") from None
                time.sleep(0.5)
        specs = running.api("/api/kernelspecs")
        assert KERNEL_NAME in specs["kernelspecs"], specs
        yield running
    finally:
        process.send_signal(signal.SIGTERM)  # by PID: the server shuts its kernels down on the way out
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
        executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": 1400, "height": 1000},
    )
    try:
        yield context
    finally:
        context.close()
        playwright.stop()


@pytest.fixture
def page(browser, lab: Lab):
    page = browser.new_page()
    page.set_default_timeout(120_000)
    try:
        yield page
    finally:
        page.close()
        lab.shutdown_kernels()  # one notebook's kernel (and its model) at a time on a small CI machine


@pytest.fixture
def shot(request):
    """shot(page, state): a full-page screenshot saved as outputs/browser/<test>-<state>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, state: str, locator=None) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{state}.png"
        (locator or page).screenshot(path=str(path))
        return path

    return take
