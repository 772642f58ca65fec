"""SqliteJobStore: the durable queue's states, order, positions, cancel, recovery and limits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from server.errors import AlreadyCompletedError, QueueFullError, RequestNotFoundError
from server.jobs import JobError, JobStatus, NewJob, SqliteJobStore, WorkerInfo
from server.jobs.base import CANCELLED, START_TIMEOUT, WORKER_LOST


@pytest.fixture()
def store(tmp_path: Path) -> SqliteJobStore:
    s = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def new(i: int = 0, **kw) -> NewJob:
    return NewJob(app="fal-ai/ovi", input={"prompt": f"p{i}"}, **kw)


def test_submit_get_and_wal(store: SqliteJobStore, tmp_path: Path) -> None:
    job = store.submit(new(attachments={"image": b"\x89PNG"}))
    assert job.status is JobStatus.IN_QUEUE and job.attempts == 0
    assert store.get(job.id).input == {"prompt": "p0"}
    assert store.attachment(job.id, "image") == b"\x89PNG"
    assert store.attachment(job.id, "other") is None
    mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with pytest.raises(RequestNotFoundError):
        store.get("nope")


def test_positions_and_claim_order_respect_priority(store: SqliteJobStore) -> None:
    a = store.submit(new(1))
    low = store.submit(new(2, priority="low"))
    b = store.submit(new(3))
    assert [store.queue_position(j.id) for j in (a, low, b)] == [0, 2, 1]
    assert store.claim("w").id == a.id
    assert store.queue_position(a.id) is None
    assert [store.queue_position(j.id) for j in (low, b)] == [1, 0]
    assert store.claim("w").id == b.id
    assert store.claim("w").id == low.id
    assert store.claim("w") is None
    assert store.counts() == {"IN_QUEUE": 0, "IN_PROGRESS": 3}


def test_claim_is_exclusive_across_connections(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = SqliteJobStore(path)
    ids = {first.submit(new(i)).id for i in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        s = SqliteJobStore(path)
        while (job := s.claim(name)) is not None:
            with lock:
                claimed.append(job.id)
        s.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # each job exactly once


def test_logs_and_complete(store: SqliteJobStore) -> None:
    job = store.submit(new())
    store.claim("w")
    store.append_log(job.id, "Step 1/2")
    store.append_log(job.id, "Step 2/2", level="DEBUG")
    logs = store.logs(job.id)
    assert [e.message for e in logs] == ["Step 1/2", "Step 2/2"]
    assert logs[1].level == "DEBUG" and logs[0].source == "USER" and "T" in logs[0].timestamp
    assert [e.message for e in store.logs(job.id, since=1)] == ["Step 2/2"]
    assert not store.complete(job.id, "other-worker", result={"x": 1})
    assert store.complete(job.id, "w", result={"x": 1}, metrics={"inference_time": 1.5})
    done = store.get(job.id)
    assert done.done and done.result == {"x": 1} and done.metrics == {"inference_time": 1.5}
    assert store.attachment(job.id, "image") is None
    assert not store.complete(job.id, "w", result={"x": 2})  # only once


def test_error_round_trip(store: SqliteJobStore) -> None:
    job = store.submit(new())
    store.claim("w")
    error = JobError("bad", "image_load_error", 422, detail=[{"loc": ["body"], "msg": "bad"}])
    store.complete(job.id, "w", error=error)
    assert store.get(job.id).error == error


def test_cancel_queued_running_and_completed(store: SqliteJobStore) -> None:
    queued = store.submit(new(1))
    running = store.submit(new(2))
    store.submit(new(3))
    assert store.claim("w").id == queued.id  # claims the first one
    # cancel the running one: a flag; cancel a queued one: done at once
    assert store.cancel(queued.id).cancel_requested
    assert store.is_cancel_requested(queued.id)
    cancelled = store.cancel(running.id)
    assert cancelled.done and cancelled.error == CANCELLED
    with pytest.raises(AlreadyCompletedError):
        store.cancel(running.id)
    with pytest.raises(RequestNotFoundError):
        store.cancel("nope")


def test_queue_full(store: SqliteJobStore) -> None:
    store.submit(new(1), max_queue_size=2)
    store.submit(new(2), max_queue_size=2)
    with pytest.raises(QueueFullError):
        store.submit(new(3), max_queue_size=2)
    store.claim("w")  # running jobs do not count
    store.submit(new(4), max_queue_size=2)


def test_start_deadline(store: SqliteJobStore) -> None:
    late = store.submit(new(1, start_timeout_s=0.05))
    ok = store.submit(new(2, start_timeout_s=60))
    time.sleep(0.1)
    job = store.get(late.id)
    assert job.done and job.error == START_TIMEOUT
    assert store.claim("w").id == ok.id


def test_release_keeps_place_and_attempts(store: SqliteJobStore) -> None:
    a = store.submit(new(1, start_timeout_s=60))
    b = store.submit(new(2))
    store.claim("w")
    assert store.release(a.id, "w")
    job = store.get(a.id)
    assert job.status is JobStatus.IN_QUEUE and job.attempts == 0 and job.start_deadline is None
    assert store.queue_position(a.id) == 0 and store.queue_position(b.id) == 1
    assert not store.release(a.id, "w")


def test_recover_requeues_once_then_fails(store: SqliteJobStore) -> None:
    a = store.submit(new(1))
    b = store.submit(new(2))
    assert store.claim("w1").id == a.id
    assert store.recover(["w1"], max_attempts=2) == [a.id]
    job = store.get(a.id)
    assert job.status is JobStatus.IN_QUEUE and job.attempts == 1
    assert store.queue_position(a.id) == 0 and store.queue_position(b.id) == 1
    assert store.claim("w2").id == a.id
    assert store.recover(["w2"], max_attempts=2) == [a.id]
    job = store.get(a.id)
    assert job.done and job.error == WORKER_LOST and job.error.status_code == 500
    assert any("Worker lost" in e.message for e in store.logs(a.id))


def test_recover_cancelled_job_completes_as_cancelled(store: SqliteJobStore) -> None:
    a = store.submit(new())
    store.claim("w1")
    store.cancel(a.id)
    store.recover(["w1"], max_attempts=2)
    assert store.get(a.id).error == CANCELLED


def test_workers_heartbeat_and_stale(store: SqliteJobStore) -> None:
    now = time.time()
    store.heartbeat(WorkerInfo(id="w1", state="warming", heartbeat_at=now, pid=1))
    store.heartbeat(WorkerInfo(id="w1", state="ready", heartbeat_at=now))
    store.heartbeat(WorkerInfo(id="old", state="ready", heartbeat_at=now - 100))
    assert {w.id: w.state for w in store.workers()} == {"w1": "ready", "old": "ready"}
    job = store.submit(new())
    store.claim("ghost")  # a worker with no row at all
    assert sorted(store.stale_workers(30)) == ["ghost", "old"]
    store.recover(["ghost"], max_attempts=2)
    assert store.get(job.id).status is JobStatus.IN_QUEUE
    store.remove_worker("w1")
    assert [w.id for w in store.workers()] == ["old"]


def test_webhooks_handed_out_once(store: SqliteJobStore) -> None:
    a = store.submit(new(1, webhook_url="https://example.com/hook"))
    store.submit(new(2))
    assert a.gateway_request_id
    assert store.take_webhooks() == []
    store.claim("w")
    store.complete(a.id, "w", result={"ok": 1})
    taken = store.take_webhooks()
    assert [j.id for j in taken] == [a.id] and taken[0].webhook_url == "https://example.com/hook"
    assert store.take_webhooks() == []


def test_sweep_removes_old_completed_only(store: SqliteJobStore) -> None:
    a = store.submit(new(1))
    b = store.submit(new(2))
    store.claim("w")
    store.complete(a.id, "w", result={})
    time.sleep(0.02)
    assert store.sweep(0.01) == 1
    with pytest.raises(RequestNotFoundError):
        store.get(a.id)
    assert store.get(b.id).status is JobStatus.IN_QUEUE


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteJobStore(path)
    ids = [s.submit(new(i)).id for i in range(3)]
    s.close()
    s = SqliteJobStore(path)
    assert [s.queue_position(i) for i in ids] == [0, 1, 2]
    assert s.claim("w").id == ids[0]
