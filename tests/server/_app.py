"""Helpers for route tests: an app with no worker processes, driven through its job store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.jobs.base import Job, JobError, JobStore, Outcome, WorkerInfo
from server.main import create_app
from server.settings import ServerSettings

KEY = "test-key"
AUTH = {"Authorization": f"Key {KEY}"}
RESULT = {
    "video": {
        "url": "/files/outputs/AAAAAAAAAAAAAAAAAAAAAA/clip.mp4",
        "content_type": "video/mp4",
        "file_name": "clip.mp4",
        "file_size": 3,
    },
    "seed": 7,
}


def make_settings(data_dir: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = dict(
        data_dir=data_dir,
        workers=0,
        api_keys=[KEY],
        poll_interval_s=0.02,
        sse_ping_interval_s=0.3,
    )
    values.update(overrides)
    return ServerSettings(**values)


@contextmanager
def running_app(settings: ServerSettings) -> Iterator[tuple[TestClient, FastAPI]]:
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app


def store_of(app: FastAPI) -> JobStore:
    return app.state.store


def claim(store: JobStore, worker: str = "w") -> Job | None:
    """Claim the next job as a live worker would: registered, with a fresh heartbeat. (A job
    held by an unregistered worker id is recovered by the app's maintenance loop as orphaned.)"""
    store.heartbeat(WorkerInfo(id=worker, state="ready", heartbeat_at=time.time()))
    return store.claim(worker)


def finish_next(
    store: JobStore,
    *,
    result: dict[str, Any] | None = None,
    error: JobError | None = None,
    worker: str = "w-test",
    logs: tuple[str, ...] = (),
) -> Job:
    """Claim the next job and complete it like a worker would."""
    job = claim(store, worker)
    assert job is not None, "nothing queued"
    for line in logs:
        store.append_log(job.id, line)
    result = None if error else (result or RESULT)
    store.complete(job.id, worker, Outcome(result, error, {"inference_time": 0.5}))
    return job


@contextmanager
def background_worker(
    store: JobStore, handle: Callable[[Job], None] | None = None, *, worker: str = "w-bg"
) -> Iterator[None]:
    """A thread that claims jobs and completes them with RESULT (or runs `handle`)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            job = claim(store, worker)
            if job is None:
                time.sleep(0.01)
                continue
            if handle is not None:
                handle(job)
            else:
                store.complete(job.id, worker, Outcome(RESULT, metrics={"inference_time": 0.1}))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
