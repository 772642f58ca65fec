"""Fault injection, stopping: each signal reaches the API alone or its whole process group
(`docker stop`, systemd, `timeout`, Ctrl-C) with the worker idle, mid-job, dead or loading.

Every stop must end within 5 s (uvicorn's connection grace) + drain + grace (5 s here) + slack,
leave no worker process behind, and put a running job back in the queue without using an
attempt; a worker SIGKILLed mid-job uses one attempt. The same for a worker group (two gloo
ranks). Workers and groups follow an API that is SIGKILLed. (`--drain-timeout`, a job that
finishes during the stop: `test_disk.py`, which ends with one.)
The model is a stand-in (`_standin.py`); the rest is the real server.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import _harness as h
import pytest

BOUND_S = 5 + 5 + 4  # connections + grace (OVI_SHUTDOWN_GRACE_S=5) + slack


def stop(server: h.Server, sig: int, *, group: bool, settle_s: float = 0.5) -> tuple[float, bool]:
    """Send `sig` to the API alone or to its whole process group; (seconds to stop, hung)."""
    seconds, hung = server.stop(sig, group=group, limit=45)
    time.sleep(settle_s)  # let the leftovers (if any) show up
    return seconds, hung


def assert_stopped_cleanly(server: h.Server, seconds: float, hung: bool) -> None:
    assert not hung and seconds < BOUND_S, seconds
    assert server.leftovers() == []


def job_row(data: Path, request_id: str) -> dict:
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id=?", (request_id,)).fetchone()
        logs = [
            r[0] for r in db.execute("SELECT message FROM job_logs WHERE job_id=?", (request_id,))
        ]
    return {**dict(row), "logs": logs}


def test_sigkill_mid_job_then_group_sigterm_mid_job(tmp_path: Path) -> None:
    """A crash uses an attempt; a graceful stop of the group does not. Two workers: the one
    left takes the job over while the killed one is restarted (and is still loading when the
    group is stopped)."""
    data = tmp_path / "data"
    server = h.start(data, workers=2, env={"STANDIN_STEP_S": "1"})
    try:

        def ready_workers() -> list[dict]:
            workers = server.health()[1]["workers"]
            return [w for w in workers if w["state"] == "ready"]

        server.wait(lambda: len(ready_workers()) == 2, 120, "two ready workers")
        job = server.submit(steps=50).json()["request_id"]  # 50 s

        def runner() -> int | None:
            held = [w["pid"] for w in ready_workers() if w["job_id"] == job]
            return held[0] if held else None

        first = server.wait(runner, 30, "a worker runs it")
        os.kill(first, signal.SIGKILL)
        server.wait(
            lambda: any("re-queued" in m for m in job_row(data, job)["logs"]), 10, "re-queue"
        )
        server.wait(lambda: runner() not in (None, first), 30, "the other worker runs it")
        server.worker_pids()
        seconds, hung = stop(server, signal.SIGTERM, group=True, settle_s=0)
    finally:
        server.kill()
    assert_stopped_cleanly(server, seconds, hung)
    row = job_row(data, job)
    assert row["status"] == "IN_QUEUE" and row["attempts"] == 1, row  # the stop used none
    assert any("back in the queue" in m for m in row["logs"])
    # (that the job then completes once after a restart: tests/e2e/test_restart.py)


def test_dead_worker_then_sigterm_to_group(tmp_path: Path) -> None:
    """The stop that used to hang forever: a worker SIGKILLed (OOM killer) just before the
    group gets SIGTERM; its restarted successor is still starting."""
    server = h.start(tmp_path / "data", wait_for=("warming",))
    try:
        server.wait(server.worker_pids, 20, "a worker process")
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.6)  # the supervisor notices and starts another
        seconds, hung = stop(server, signal.SIGTERM, group=True)
    finally:
        server.kill()
    assert_stopped_cleanly(server, seconds, hung)


def test_stop_while_the_model_loads(tmp_path: Path) -> None:
    """Ctrl-C to the API alone while the worker still loads: no wait for the load to end."""
    sig = signal.SIGINT
    server = h.start(tmp_path / "data", env={"STANDIN_LOAD_S": "120"}, wait_for=("warming",))
    try:
        server.wait(server.worker_pids, 20, "a worker process")
        time.sleep(1.0)
        seconds, hung = stop(server, sig, group=False)
    finally:
        server.kill()
    assert_stopped_cleanly(server, seconds, hung)


def test_worker_group_stop_releases_the_job_and_leaves_no_rank(tmp_path: Path) -> None:
    """A worker group (`--cfg-parallel`, two gloo ranks, real collectives; the model a stand-in)
    mid-job when the whole process group gets SIGTERM: the ranks ride the signal out, rank 0
    releases the job without using an attempt, and nothing is left (forkserver, ranks)."""
    data = tmp_path / "data"
    server = h.start(
        data, env={"STANDIN_STEP_S": "1"}, args=("--cfg-parallel", "--world-size", "2")
    )
    try:
        job = server.submit(steps=50).json()["request_id"]  # 50 s
        server.wait(lambda: server.status(job)["status"] == "IN_PROGRESS", 60, "running")
        time.sleep(1.5)  # a step or two on both ranks
        assert len(server.descendants()) >= 3  # the group process, its forkserver, the ranks
        seconds, hung = stop(server, signal.SIGTERM, group=True, settle_s=0)
        time.sleep(1.0)
    finally:
        server.kill()
    assert_stopped_cleanly(server, seconds, hung)
    row = job_row(data, job)
    assert row["status"] == "IN_QUEUE" and row["attempts"] == 0, row
    assert any("back in the queue" in m for m in row["logs"]), row["logs"]


@pytest.mark.parametrize("kind", ["worker", "group"])
def test_workers_follow_the_api_when_it_is_killed(tmp_path: Path, kind: str) -> None:
    """The API SIGKILLed alone (no lifespan cleanup) mid-job: its worker (or worker group:
    group process and ranks) notices, releases the job and exits within seconds."""
    data = tmp_path / "data"
    args = ("--cfg-parallel", "--world-size", "2") if kind == "group" else ()
    server = h.start(data, env={"STANDIN_STEP_S": "1"}, args=args)
    try:
        job = server.submit(steps=50).json()["request_id"]  # 50 s
        server.wait(lambda: server.status(job)["status"] == "IN_PROGRESS", 60, "running")
        assert server.descendants()
        server.process.kill()
        server.process.wait(10)
        deadline = time.monotonic() + 15
        while server.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = server.leftovers()
    finally:
        server.kill()
    assert left == [], left
    row = job_row(data, job)
    assert row["status"] == "IN_QUEUE" and row["attempts"] == 0, row
