"""server/supervisor.py: worker processes that crash are restarted; their job is re-queued once,
then failed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from server.jobs import NewJob, open_store
from server.jobs.base import WORKER_LOST, WorkerInfo
from server.settings import ServerSettings
from server.supervisor import WorkerSupervisor


def crashing_worker(settings: ServerSettings, worker_id: str, slot: int) -> None:
    """Spawned target: claim one job and die without a word."""
    store = open_store(settings.job_store_url)
    store.heartbeat(
        WorkerInfo(id=worker_id, state="ready", heartbeat_at=time.time(), pid=os.getpid())
    )
    while True:
        if store.claim(worker_id) is not None:
            os._exit(3)
        time.sleep(0.02)


def test_supervisor_requeues_once_then_fails(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path, workers=1, max_attempts=2)
    store = open_store(settings.job_store_url)
    job = store.submit(NewJob(app="fal-ai/ovi", input={"prompt": "x"}))
    supervisor = WorkerSupervisor(settings, store, target=crashing_worker)
    supervisor.start()
    try:
        deadline = time.time() + 60
        while not store.get(job.id).done and time.time() < deadline:
            time.sleep(0.05)
    finally:
        supervisor.stop(grace_s=2)
    done = store.get(job.id)
    assert done.error == WORKER_LOST, done
    assert done.attempts == 2
    assert any("re-queued" in e.message for e in store.logs(job.id))
    assert supervisor.alive() == []
    store.close()
