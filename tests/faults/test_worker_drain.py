"""`ovi worker` on a Redis job store (a worker on a machine of its own) stopped with SIGTERM
mid-job: without `--drain-timeout` the job goes back to the front of the queue at its next step
without using an attempt, and another worker finishes it; with `--drain-timeout` the running job
finishes first. Either way the worker exits by itself within the documented bound.
The model is a stand-in (`_standin.py`); the CLI, the worker loop and Redis are real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _harness import HERE, ROOT

from server.jobs import JobStatus, NewJob, open_store
from server.jobs.base import JobStore
from server.schemas import T2V_APP, OviInput
from tools.services import RedisServer

pytestmark = pytest.mark.skipif(not RedisServer.available(), reason="no redis-server")

GRACE_S = 5  # OVI_SHUTDOWN_GRACE_S
STEP_S = 0.4  # STANDIN_STEP_S
LOAD_S = 300  # model load + first claim: imports alone took 30-120 s on this shared machine


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def start_worker(tmp_path: Path, url: str, name: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    env.update(
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT),
        STANDIN_STEP_S=str(STEP_S),
        OVI_POLL_INTERVAL_S="0.05",
        OVI_SHUTDOWN_GRACE_S=str(GRACE_S),
    )
    cmd = [
        sys.executable, str(HERE / "_standin.py"), "worker", "--preset", "tiny_1s",
        "--device", "cpu", "--job-store", url, "--storage", (tmp_path / "files").as_uri(),
        "--data-dir", str(tmp_path / name), *args,
    ]  # fmt: skip
    with open(tmp_path / f"{name}.log", "ab") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def submit(store: JobStore, steps: int) -> str:
    body = OviInput(prompt="drain", num_inference_steps=steps, seed=1).model_dump(mode="json")
    return store.submit(NewJob(app=T2V_APP, input=body)).id


def stop(proc: subprocess.Popen, log: Path) -> float:
    """SIGTERM; seconds until the worker exited by itself (0 exit status)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(GRACE_S + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"worker hung after SIGTERM:\n{log.read_text()[-3000:]}") from None
    assert code == 0, log.read_text()[-3000:]
    return time.monotonic() - t0


def test_sigterm_releases_the_job_to_another_worker(tmp_path: Path, redis: RedisServer) -> None:
    store = open_store(redis.url, retry_s=5)
    first = start_worker(tmp_path, redis.url, "w1")
    second = None
    try:
        job = submit(store, steps=50)  # 20 s: still running when stopped
        wait(lambda: store.get(job).status is JobStatus.IN_PROGRESS, LOAD_S, "the job to start")
        seconds = stop(first, tmp_path / "w1.log")
        assert seconds < GRACE_S + 5
        held = store.get(job)
        assert held.status is JobStatus.IN_QUEUE and held.attempts == 0  # no attempt used
        assert store.queue_position(job) == 0
        assert "back in the queue" in store.logs(job)[-1].message
        second = start_worker(tmp_path, redis.url, "w2")
        wait(lambda: store.get(job).status is JobStatus.IN_PROGRESS, LOAD_S, "the second worker")
        store.cancel(job)  # the hand-over is shown; no need to run its 50 steps
        done = wait(lambda: (j := store.get(job)).done and j, 30, "the cancel")
        assert done.error is not None and done.attempts == 1
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        store.close()


def test_sigterm_with_drain_timeout_finishes_the_job(tmp_path: Path, redis: RedisServer) -> None:
    store = open_store(redis.url, retry_s=5)
    worker = start_worker(tmp_path, redis.url, "w", "--drain-timeout", "30")
    try:
        job = submit(store, steps=8)  # 3.2 s
        wait(lambda: store.get(job).status is JobStatus.IN_PROGRESS, LOAD_S, "the job to start")
        stop(worker, tmp_path / "w.log")
        done = store.get(job)
        assert done.done and done.error is None and done.result, done
        assert done.attempts == 1
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        store.close()
