"""`python -m bench --small` starts in the background as soon as collection ends, and the tests
that read its JSON run last: its ~20 s (a subprocess on one CPU thread) overlap the rest of the
suite instead of adding to it. The `bench_small` fixture waits for it, bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH_MODULE = "test_bench_small.py"
TIMEOUT_S = 300
_RUN = pytest.StashKey["BenchRun"]()


@dataclass
class BenchRun:
    process: subprocess.Popen[bytes]
    folder: Path

    @property
    def out(self) -> Path:
        return self.folder / "small.json"

    def log(self, name: str) -> str:
        return (self.folder / name).read_text(errors="replace")


def _selected(items: list[pytest.Item]) -> bool:
    return any(item.path.name == BENCH_MODULE for item in items)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name == BENCH_MODULE)  # stable: the rest keep order


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _selected(session.items):
        return
    folder = Path(tempfile.mkdtemp(prefix="ovi-bench-small-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench", "--small", "--out", str(folder / "small.json")],
            cwd=ROOT, env=env, stdout=out, stderr=err,
        )  # fmt: skip
    session.config.stash[_RUN] = BenchRun(process, folder)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(_RUN, None)
    if run is not None and run.process.poll() is None:
        run.process.kill()
        run.process.wait(10)


@pytest.fixture(scope="session")
def bench_small(pytestconfig: pytest.Config) -> dict:
    """The figures of the background `python -m bench --small` run (see the module docstring)."""
    run = pytestconfig.stash[_RUN]
    try:
        code = run.process.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run.process.kill()
        pytest.fail(
            f"python -m bench --small took over {TIMEOUT_S} s:\n{run.log('stdout')[-3000:]}"
        )
    stdout = run.log("stdout")
    assert code == 0, stdout[-3000:] + run.log("stderr")[-3000:]
    assert "239.8 TFLOP reference-style" in stdout  # the counter prints the figure
    return json.loads(run.out.read_text())
