"""Fault injection, stopping: each signal reaches the API alone or its whole process group
(`docker stop`, systemd, `timeout`, Ctrl-C) with the worker idle, mid-job, dead or loading.

Every stop must end within 5 s (uvicorn's connection grace) + drain + grace (5 s here) + slack,
leave no worker process behind, and put a running job back in the queue without using an
attempt; a worker SIGKILLed mid-job uses one attempt.
The model is a stand-in (`_standin.py`); the rest is the real server.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import _harness as h
import pytest

BOUND_S = 5 + 5 + 4  # connections + grace (OVI_SHUTDOWN_GRACE_S=5) + slack


def job_row(data: Path, request_id: str) -> dict:
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id=?", (request_id,)).fetchone()
        logs = [
            r[0] for r in db.execute("SELECT message FROM job_logs WHERE job_id=?", (request_id,))
        ]
    return {**dict(row), "logs": logs}


def test_sigkill_mid_job_then_group_sigterm_mid_job(tmp_path: Path) -> None:
    """A crash uses an attempt; a graceful stop of the group does not."""
    data = tmp_path / "data"
    server = h.start(data, env={"STANDIN_STEP_S": "1"})
    try:
        job = server.submit(steps=50).json()["request_id"]  # 50 s
        server.wait(lambda: server.status(job)["status"] == "IN_PROGRESS", 30, "running")
        first = server.worker_pids()
        os.kill(first[0], signal.SIGKILL)
        server.wait(
            lambda: any("re-queued" in m for m in job_row(data, job)["logs"]), 10, "re-queue"
        )
        server.wait(
            lambda: (
                server.status(job)["status"] == "IN_PROGRESS"
                and set(server.worker_pids()) - set(first)
            ),
            60,
            "the restarted worker runs it",
        )
        seconds, hung = server.stop(signal.SIGTERM, group=True, limit=45)
    finally:
        server.kill()
    assert not hung and seconds < BOUND_S, seconds
    assert server.leftovers() == []
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
        seconds, hung = server.stop(signal.SIGTERM, group=True, limit=45)
        time.sleep(0.5)
    finally:
        server.kill()
    assert not hung and seconds < BOUND_S, seconds
    assert server.leftovers() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_while_the_model_loads(tmp_path: Path, sig: int) -> None:
    """To the API alone while the worker still loads: no wait for the load to finish."""
    server = h.start(tmp_path / "data", env={"STANDIN_LOAD_S": "120"}, wait_for=("warming",))
    try:
        server.wait(server.worker_pids, 20, "a worker process")
        time.sleep(1.0)
        seconds, hung = server.stop(sig, group=False, limit=45)
        time.sleep(0.5)
    finally:
        server.kill()
    assert not hung and seconds < BOUND_S, seconds
    assert server.leftovers() == []


def test_drain_timeout_lets_the_running_job_finish(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = h.start(data, args=("--drain-timeout", "20"))
    try:
        job = server.submit(steps=15).json()["request_id"]  # ~3 s at 0.2 s a step
        server.wait(lambda: server.status(job)["status"] == "IN_PROGRESS", 30, "running")
        seconds, hung = server.stop(signal.SIGTERM, group=True, limit=45)
    finally:
        server.kill()
    assert not hung and seconds < BOUND_S + 20
    row = job_row(data, job)
    assert row["status"] == "COMPLETED" and row["error"] is None, row
    assert json.loads(row["result"])["video"]["url"]
    assert server.leftovers() == []
