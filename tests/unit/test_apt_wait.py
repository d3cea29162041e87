"""scripts/test.sh installs chromium with apt; when another apt/dpkg holds the lock (unattended upgrades on a fresh
Workbench instance) it waits, bounded, instead of failing (scripts/apt_get.sh). Tried with the real lock held by
another process, and an apt-get update that reads no sources (so no network, but the same lock)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(os.getuid() != 0 or shutil.which("apt-get") is None,
                                reason="apt's locks need root and apt-get (the CI machine has both)")
OFFLINE_UPDATE = "apt_get -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=/nonexistent update"
HOLD = """
import fcntl, os, sys
fd = os.open("/var/lib/apt/lists/lock", os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)  # apt's own lock call (fcntl record lock)
print("locked", flush=True)
sys.stdin.readline()  # held until the test says so
"""


def start_holder() -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def apt_get(wait: int) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f". scripts/apt_get.sh; {OFFLINE_UPDATE}"], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "APT_LOCK_WAIT": str(wait), "APT_LOCK_POLL": "0.2"})


def test_apt_waits_for_the_lock_and_then_runs():
    holder = start_holder()
    try:
        apt = apt_get(wait=600)
        first = apt.stdout.readline()  # the condition: apt_get has met the lock and says it waits
        assert "another apt/dpkg holds its lock; waiting (at most 600s in all)" in first
        assert apt.poll() is None  # still waiting, not failed
    finally:
        holder.stdin.close()  # let go of the lock
        holder.wait(timeout=60)
    out, err = apt.communicate(timeout=120)
    assert apt.returncode == 0, first + out + err


def test_apt_gives_up_after_its_bound_with_apts_own_message():
    holder = start_holder()
    try:
        apt = apt_get(wait=5)  # long enough that apt-get's first try returns inside it, even on a loaded machine
        out, err = apt.communicate(timeout=120)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert apt.returncode == 1
    assert "Could not get lock /var/lib/apt/lists/lock" in err and "waiting (at most 5s in all)" in out
