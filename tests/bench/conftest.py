"""`bench/gpu-lease.sh main DIR --small --plan full` (`python -m bench --small`) starts in the background as soon as collection ends, and the tests
that read its JSON run last: its ~20 s (a subprocess on one CPU thread) overlap the rest of the
suite instead of adding to it. The `bench_small` fixture waits for it, bounded."""

from __future__ import annotations

import contextlib
import json
import os
import signal
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
        return self.folder / "bench.json"

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
    # through the GPU lease command itself (bench/gpu-lease.sh), every section (--plan full)
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable,
        "BENCH_BUDGET_S": str(TIMEOUT_S - 60),
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor-cache"),
    }  # fmt: skip
    command = [
        str(ROOT / "bench" / "gpu-lease.sh"),
        "main",
        str(folder),
        "--small",
        "--plan",
        "full",
    ]
    with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )  # its own process group: the script, python and tee end together (`_kill`)
    session.config.stash[_RUN] = BenchRun(process, folder)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(_RUN, None)
    if run is not None:
        _kill(run)


def _kill(run: BenchRun) -> None:
    """End the background run's whole process group (only it: its own session)."""
    if run.process.poll() is not None:
        return  # finished: its group is gone with it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        run.process.wait(10)


@pytest.fixture(scope="session")
def bench_small(bench_small_run: BenchRun) -> dict:
    """The figures of the background `python -m bench --small` run (see the module docstring)."""
    return json.loads(bench_small_run.out.read_text())


@pytest.fixture(scope="session")
def bench_small_run(pytestconfig: pytest.Config) -> BenchRun:
    """The finished background run: its folder holds bench.json, bench.kernels.txt, bench.log."""
    run = pytestconfig.stash[_RUN]
    try:
        code = run.process.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(run)
        pytest.fail(
            f"python -m bench --small took over {TIMEOUT_S} s:\n{run.log('stdout')[-3000:]}"
        )
    stdout = run.log("stdout")
    assert code == 0, stdout[-3000:] + run.log("stderr")[-3000:]
    assert "239.8 TFLOP reference-style" in stdout  # the counter prints the figure
    return run
