"""Fault injection, a full disk: a small tmpfs (mounted by the test, as root) holds the data dir.

While full: `/health` says `degraded` with the reason, submits answer 507 with `Retry-After`,
a job whose output cannot be written completes with that error, and no process dies. Once space
is freed, work resumes by itself (no restart); with `--drain-timeout`, a stop lets the running
job finish."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import _harness as h
import pytest


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        timeout=10,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], timeout=10)


def fill(disk: Path) -> Path:
    """Write until the file system is full (MiB, then KiB, then single pages)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_is_degraded_refused_and_recovers(small_disk: Path) -> None:
    data = small_disk / "data"
    server = h.start(
        data,
        env={"STANDIN_STEP_S": "0.25", "OVI_MIN_FREE_DISK_MB": "1"},
        args=("--drain-timeout", "20"),
    )
    try:
        pids = server.worker_pids()
        running = server.submit(steps=20).json()["request_id"]  # ~5 s
        server.wait(lambda: server.status(running)["status"] == "IN_PROGRESS", 30, "running")
        fill(small_disk)

        code, body = server.health()
        assert code == 200 and body["status"] == "degraded", body
        assert any(r.startswith("disk full") for r in body["reasons"]), body
        refused = server.submit()
        assert refused.status_code == 507, refused.text
        assert refused.headers["retry-after"] and "disk" in refused.json()["detail"]

        # the running job's output cannot be written: it completes with that error once the
        # store can record it (here: after the space is freed)
        (small_disk / "filler").unlink()
        server.wait(lambda: server.status(running)["status"] == "COMPLETED", 30, "the job ends")
        with server.http() as c:
            answer = c.get(f"/queue/{h.T2V}/requests/{running}")
        assert answer.status_code in (200, 507), answer.text
        if answer.status_code == 507:
            assert "Could not write the output" in answer.text

        server.wait(lambda: server.health()[1]["status"] == "ready", 30, "ready again")  # noqa

        job = server.submit(steps=12).json()["request_id"]  # ~3 s
        server.wait(lambda: server.status(job)["status"] == "IN_PROGRESS", 30, "work resumed")
        assert server.worker_pids() == pids  # nothing died on the way
        # and `--drain-timeout 20`: SIGTERM to the group lets the running job finish
        seconds, hung = server.stop(signal.SIGTERM, group=True, limit=45)
    finally:
        server.kill()
    assert not hung and seconds < 5 + 20 + 5 + 4
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        status, error, result = db.execute(
            "SELECT status, error, result FROM jobs WHERE id=?", (job,)
        ).fetchone()
    assert status == "COMPLETED" and error is None and json.loads(result)["video"]["url"]
    assert server.leftovers() == []


def test_output_that_cannot_be_written_completes_with_that_error(
    small_disk: Path, tmp_path: Path
) -> None:
    """In-process: the real `run_job` with the stand-in model, a store off the full disk and
    the outputs on it."""
    from _standin import StandInPipeline

    from server.jobs import NewJob, SqliteJobStore
    from server.storage import LocalStorage
    from server.worker import JobContext, run_job

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    storage = LocalStorage(small_disk / "files")
    try:
        store.submit(NewJob(app=h.T2V, input={"prompt": "x", "num_inference_steps": 2, "seed": 3}))
        job = store.claim("w")
        fill(small_disk)
        ctx = JobContext(store=store, storage=storage, worker_id="w", tmp_dir=small_disk / "tmp")
        run_job(StandInPipeline(0.0), job, ctx)
        done = store.get(job.id)
        assert done.done and done.error is not None, done
        assert done.error.error_type == "output_write_error" and done.error.status_code == 507
        assert "No space left on device" in done.error.message
    finally:
        store.close()
