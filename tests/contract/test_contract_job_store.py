"""The `JobStore` contract: what every backend (`conftest.JOB_STORES`) must do, through the
protocol only: queue order and positions with priorities, claim atomicity under concurrent
claimers, cancel in each state, recovery of dead workers, deadlines, retention, the outbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from server.jobs import (
    Delivery,
    JobAlreadyCompletedError,
    JobError,
    JobNotFoundError,
    JobStatus,
    JobStore,
    NewJob,
    Outcome,
    QueueFullError,
    WorkerInfo,
)
from server.jobs.base import CANCELLED, START_TIMEOUT, WORKER_LOST


def new(i: int = 0, **kw) -> NewJob:
    return NewJob(app="fal-ai/ovi", input={"prompt": f"p{i}"}, **kw)


def positions(store: JobStore, *jobs) -> list[int | None]:
    return [store.queue_position(j.id) for j in jobs]


# --- submit, read, order ---


def test_submit_and_get(store: JobStore) -> None:
    job = store.submit(
        new(input_files={"image": "inputs/AAAAAAAAAAAAAAAAAAAAAA/image"}, user_id="u1")
    )
    assert job.status is JobStatus.IN_QUEUE and job.attempts == 0 and job.id
    again = store.get(job.id)
    assert again.input == {"prompt": "p0"} and again.user_id == "u1"
    assert again.input_files == {"image": "inputs/AAAAAAAAAAAAAAAAAAAAAA/image"}
    assert store.submit(new(request_id="chosen-id")).id == "chosen-id"
    with pytest.raises(JobNotFoundError):
        store.get("nope")


def test_get_without_the_input(store: JobStore) -> None:
    """Status polls read a job without its (possibly 10 MB) input; everything else is there."""
    job = store.submit(new(1, user_id="alice", webhook_url="https://h/x"))
    light = store.get(job.id, with_input=False)
    assert light.input == {} and store.get(job.id).input == {"prompt": "p1"}
    assert (light.id, light.status, light.user_id, light.webhook_url) == (
        job.id,
        JobStatus.IN_QUEUE,
        "alice",
        "https://h/x",
    )
    with pytest.raises(JobNotFoundError):
        store.get("nope", with_input=False)


def test_queue_order_and_positions_with_priorities(store: JobStore) -> None:
    a = store.submit(new(1))
    low = store.submit(new(2, priority="low"))
    b = store.submit(new(3))
    low2 = store.submit(new(4, priority="low"))
    assert positions(store, a, low, b, low2) == [0, 2, 1, 3]
    assert store.claim("w").id == a.id
    assert positions(store, a, low, b, low2) == [None, 1, 0, 2]
    assert store.claim("w").id == b.id
    c = store.submit(new(5))  # a later normal job still goes before the low ones
    assert positions(store, c, low, low2) == [0, 1, 2]
    assert [store.claim("w").id for _ in range(3)] == [c.id, low.id, low2.id]
    assert store.claim("w") is None
    assert store.counts() == {"IN_QUEUE": 0, "IN_PROGRESS": 5}


def test_queue_full(store: JobStore) -> None:
    store.submit(new(1), max_queue_size=2)
    store.submit(new(2), max_queue_size=2)
    with pytest.raises(QueueFullError):
        store.submit(new(3), max_queue_size=2)
    store.claim("w")  # running jobs do not count
    store.submit(new(4), max_queue_size=2)
    assert store.counts() == {"IN_QUEUE": 2, "IN_PROGRESS": 1}


def test_claim_is_atomic_under_concurrent_claimers(
    store: JobStore, connect: Callable[[], JobStore]
) -> None:
    ids = {store.submit(new(i)).id for i in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()
    stores = [connect() for _ in range(4)]  # one connection per claimer

    def claimer(name: str, own: JobStore) -> None:
        while (job := own.claim(name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}", s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)  # each job exactly once
    assert {store.get(i).worker_id for i in ids} <= {"w0", "w1", "w2", "w3"}


# --- workers: logs, completion, release ---


def test_logs_and_complete_once_by_the_holder(store: JobStore) -> None:
    job = store.submit(new())
    store.claim("w")
    store.append_log(job.id, "Step 1/2")
    store.append_log(job.id, "Step 2/2", level="DEBUG", source="SYSTEM")
    logs = store.logs(job.id)
    assert [e.message for e in logs] == ["Step 1/2", "Step 2/2"]
    assert (logs[1].level, logs[1].source, logs[0].source) == ("DEBUG", "SYSTEM", "USER")
    assert "T" in logs[0].timestamp
    assert [e.message for e in store.logs(job.id, since=1)] == ["Step 2/2"]
    assert not store.complete(job.id, "other-worker", Outcome(result={"x": 1}))
    assert store.complete(job.id, "w", Outcome({"x": 1}, metrics={"inference_time": 1.5}))
    done = store.get(job.id)
    assert done.done and done.result == {"x": 1} and done.metrics == {"inference_time": 1.5}
    assert done.finished_at is not None and done.error is None
    assert not store.complete(job.id, "w", Outcome(result={"x": 2}))  # only once
    assert store.get(job.id).result == {"x": 1}


def test_error_round_trip(store: JobStore) -> None:
    job = store.submit(new())
    store.claim("w")
    error = JobError("bad", "image_load_error", 422, detail=[{"loc": ["body"], "msg": "bad"}])
    store.complete(job.id, "w", Outcome(error=error))
    assert store.get(job.id).error == error


def test_release_keeps_place_and_attempts(store: JobStore) -> None:
    a = store.submit(new(1, start_timeout_s=60))
    b = store.submit(new(2))
    store.claim("w")
    assert store.release(a.id, "w")
    job = store.get(a.id)
    assert job.status is JobStatus.IN_QUEUE and job.attempts == 0 and job.start_deadline is None
    assert positions(store, a, b) == [0, 1]
    assert not store.release(a.id, "w")  # no longer held


# --- cancel in each state ---


def test_cancel_queued_completes_at_once(store: JobStore) -> None:
    job = store.submit(new())
    cancelled = store.cancel(job.id)
    assert cancelled.done and cancelled.error == CANCELLED
    assert store.claim("w") is None


def test_cancel_running_sets_the_flag(store: JobStore) -> None:
    job = store.submit(new())
    store.claim("w")
    assert not store.is_cancel_requested(job.id)
    flagged = store.cancel(job.id)
    assert flagged.status is JobStatus.IN_PROGRESS and flagged.cancel_requested
    assert store.is_cancel_requested(job.id)
    assert store.complete(job.id, "w", Outcome(error=CANCELLED))  # the worker stops


def test_cancel_running_then_release_completes_as_cancelled(store: JobStore) -> None:
    job = store.submit(new())
    store.claim("w")
    store.cancel(job.id)
    assert store.release(job.id, "w")  # shutting down: a cancelled job does not go back
    assert store.get(job.id).error == CANCELLED


def test_cancel_completed_or_unknown(store: JobStore) -> None:
    job = store.submit(new())
    store.cancel(job.id)
    with pytest.raises(JobAlreadyCompletedError) as raised:
        store.cancel(job.id)
    assert raised.value.request_id == job.id
    with pytest.raises(JobNotFoundError):
        store.cancel("nope")


# --- deadlines ---


def test_start_deadline(store: JobStore) -> None:
    late = store.submit(new(1, start_timeout_s=0.05))
    ok = store.submit(new(2, start_timeout_s=60))
    time.sleep(0.1)
    job = store.get(late.id)
    assert job.done and job.error == START_TIMEOUT
    assert store.claim("w").id == ok.id


def test_expire_overdue_counts(store: JobStore) -> None:
    store.submit(new(1, start_timeout_s=0.05))
    store.submit(new(2, start_timeout_s=0.05))
    time.sleep(0.1)
    assert store.expire_overdue() == 2
    assert store.expire_overdue() == 0
    assert store.counts()["IN_QUEUE"] == 0


def test_cancel_after_deadline_is_already_completed(store: JobStore) -> None:
    job = store.submit(new(start_timeout_s=0.05))
    time.sleep(0.1)
    with pytest.raises(JobAlreadyCompletedError):
        store.cancel(job.id)


# --- recovery of dead workers ---


def test_recover_requeues_once_then_fails(store: JobStore) -> None:
    a = store.submit(new(1))
    b = store.submit(new(2))
    assert store.claim("w1").id == a.id
    assert store.recover(["w1"], max_attempts=2) == [a.id]
    job = store.get(a.id)
    assert job.status is JobStatus.IN_QUEUE and job.attempts == 1
    assert positions(store, a, b) == [0, 1]  # keeps its place at the front
    assert store.claim("w2").id == a.id
    assert store.recover(["w2"], max_attempts=2) == [a.id]
    job = store.get(a.id)
    assert job.done and job.error == WORKER_LOST and job.error.status_code == 500
    assert any("Worker lost" in e.message for e in store.logs(a.id))
    assert store.recover([], max_attempts=2) == []


def test_recover_cancelled_job_completes_as_cancelled(store: JobStore) -> None:
    a = store.submit(new())
    store.claim("w1")
    store.cancel(a.id)
    store.recover(["w1"], max_attempts=2)
    assert store.get(a.id).error == CANCELLED


def test_workers_heartbeat_and_stale(store: JobStore) -> None:
    now = time.time()
    store.heartbeat(WorkerInfo(id="w1", state="warming", heartbeat_at=now, pid=1))
    store.heartbeat(WorkerInfo(id="w1", state="ready", heartbeat_at=now, pid=1))
    store.heartbeat(WorkerInfo(id="old", state="ready", heartbeat_at=now - 100))
    assert {w.id: w.state for w in store.workers()} == {"w1": "ready", "old": "ready"}
    job = store.submit(new())
    store.claim("ghost")  # a worker with no record at all
    assert sorted(store.stale_workers(30)) == ["ghost", "old"]
    assert store.recover(["ghost", "old"], max_attempts=2) == [job.id]
    assert store.get(job.id).status is JobStatus.IN_QUEUE
    assert [w.id for w in store.workers()] == ["w1"]  # recovered workers are forgotten
    store.remove_worker("w1")
    assert store.workers() == []


def test_heartbeat_carries_a_metrics_snapshot(store: JobStore) -> None:
    snap = [{"name": "ovi_x", "type": "gauge", "help": "h", "samples": [["ovi_x", {}, 2.5]]}]
    store.heartbeat(WorkerInfo(id="w1", state="ready", heartbeat_at=time.time(), metrics=snap))
    assert store.workers()[0].metrics == snap
    store.heartbeat(WorkerInfo(id="w1", state="ready", heartbeat_at=time.time()))
    assert store.workers()[0].metrics == []


def test_queue_depths_per_priority(store: JobStore) -> None:
    assert store.queue_depths() == {"normal": 0, "low": 0}
    store.submit(new(1))
    store.submit(new(2, priority="low"))
    store.submit(new(3, priority="low"))
    assert store.queue_depths() == {"normal": 1, "low": 2}
    store.claim("w")
    assert store.queue_depths() == {"normal": 0, "low": 2}


def test_recent_pages_newest_first_and_by_user(store: JobStore) -> None:
    jobs = [store.submit(new(i, user_id="a" if i % 2 else "b")) for i in range(5)]
    ids = [j.id for j in jobs]
    assert [j.id for j in store.recent(limit=2)] == [ids[4], ids[3]]
    assert [j.id for j in store.recent(limit=2, after=ids[3])] == [ids[2], ids[1]]
    assert [j.id for j in store.recent(limit=10, newest_first=False)] == ids
    assert [j.id for j in store.recent(limit=10, user_id="a")] == [ids[3], ids[1]]
    with pytest.raises(JobNotFoundError):
        store.recent(after="nope")


def test_delete_forgets_a_job(store: JobStore) -> None:
    job = store.submit(new())
    store.append_log(job.id, "hello")
    assert store.delete(job.id).id == job.id
    with pytest.raises(JobNotFoundError):
        store.get(job.id)
    with pytest.raises(JobNotFoundError):
        store.delete(job.id)
    running = store.submit(new(1))
    store.claim("w")
    store.delete(running.id)
    assert store.is_cancel_requested(running.id)  # a worker still running it stops
    assert not store.complete(running.id, "w", Outcome(result={}))  # the worker finds it gone


# --- retention ---


def test_sweep_removes_old_completed_only(store: JobStore) -> None:
    a = store.submit(new(1))
    b = store.submit(new(2))
    c = store.submit(new(3))
    store.claim("w")
    store.complete(a.id, "w", Outcome(result={}))
    store.claim("w")  # b runs
    time.sleep(0.05)
    assert store.sweep(3600) == 0  # nothing that old
    assert store.sweep(0.01) == 1
    with pytest.raises(JobNotFoundError):
        store.get(a.id)
    assert store.get(b.id).status is JobStatus.IN_PROGRESS
    assert store.get(c.id).status is JobStatus.IN_QUEUE


def test_sweep_keeps_a_job_until_its_webhook_is_in_the_outbox(store: JobStore) -> None:
    job = store.submit(new(webhook_url="https://example.com/hook"))
    store.claim("w")
    store.complete(job.id, "w", Outcome(result={}))
    time.sleep(0.05)
    assert store.sweep(0.01) == 0
    store.add_delivery(Delivery(job.id, "https://example.com/hook", b"{}"))
    assert store.sweep(0.01) == 1


# --- the webhook outbox ---


def test_webhooks_due_until_handed_to_the_outbox(store: JobStore) -> None:
    a = store.submit(new(1, webhook_url="https://example.com/hook", user_id="u"))
    store.submit(new(2))
    assert a.gateway_request_id
    assert store.webhooks_due() == []
    store.claim("w")
    store.complete(a.id, "w", Outcome(result={"ok": 1}))
    due = store.webhooks_due()
    assert [j.id for j in due] == [a.id] and due[0].webhook_url == "https://example.com/hook"
    assert store.webhooks_due() == due  # reading does not hand it over
    delivery = Delivery(a.id, "https://example.com/hook", b'{"a": 1}', user_id="u")
    assert store.add_delivery(delivery)
    assert store.webhooks_due() == []
    assert not store.add_delivery(delivery)  # one delivery per request, also when repeated
    assert store.delivery_counts() == {"pending": 1}


def test_deliveries_are_leased_retried_and_given_up(store: JobStore) -> None:
    now = time.time()
    store.add_delivery(Delivery("r1", "https://a/hook", b"1", user_id="u"), not_before=now)
    store.add_delivery(Delivery("r2", "https://b/hook", b"2"), not_before=now + 1000)
    assert store.next_delivery_at() == pytest.approx(now)
    (first,) = store.claim_deliveries(10, lease_s=60, now=now)
    assert (first.request_id, first.url, first.body, first.user_id, first.attempts) == (
        "r1",
        "https://a/hook",
        b"1",
        "u",
        0,
    )
    assert store.claim_deliveries(10, lease_s=60, now=now) == []  # leased: not handed out twice
    store.finish_delivery("r1", error="HTTP 500", retry_at=now + 5)
    assert store.claim_deliveries(10, lease_s=60, now=now + 4) == []
    (again,) = store.claim_deliveries(10, lease_s=60, now=now + 5)
    assert again.attempts == 1 and again.body == b"1"
    store.finish_delivery("r1", error="HTTP 500")  # no retry: given up
    assert store.delivery_counts() == {"pending": 1, "failed": 1}
    assert store.claim_deliveries(10, lease_s=60, now=now + 10_000)[0].request_id == "r2"
    store.finish_delivery("r2")  # delivered: gone
    assert store.delivery_counts() == {"failed": 1}
    assert store.next_delivery_at() is None


def test_an_expired_lease_makes_a_delivery_due_again(store: JobStore) -> None:
    now = time.time()
    store.add_delivery(Delivery("r", "https://a/hook", b"x"), not_before=now)
    assert len(store.claim_deliveries(1, lease_s=10, now=now)) == 1  # its sender then died
    assert store.claim_deliveries(1, lease_s=10, now=now + 9) == []
    assert len(store.claim_deliveries(1, lease_s=10, now=now + 10)) == 1


def test_concurrent_senders_lease_each_delivery_once(
    store: JobStore, connect: Callable[[], JobStore]
) -> None:
    now = time.time()
    for i in range(30):
        store.add_delivery(Delivery(f"r{i}", "https://a/hook", b"x"), not_before=now)
    taken: list[str] = []
    lock = threading.Lock()

    def sender(own: JobStore) -> None:
        while batch := own.claim_deliveries(3, lease_s=600, now=now):
            with lock:
                taken.extend(d.request_id for d in batch)

    threads = [threading.Thread(target=sender, args=(connect(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == sorted(f"r{i}" for i in range(30))


def test_old_failed_deliveries_are_swept(store: JobStore) -> None:
    store.add_delivery(Delivery("r", "https://a/hook", b"x"))
    store.claim_deliveries(1, lease_s=1)
    store.finish_delivery("r", error="HTTP 500")
    time.sleep(0.05)
    store.sweep(0.01)
    assert store.delivery_counts() == {}


def test_state_is_shared_between_connections(connect: Callable[[], JobStore]) -> None:
    api, worker = connect(), connect()
    job = api.submit(new())
    assert worker.claim("w").id == job.id
    assert api.get(job.id).status is JobStatus.IN_PROGRESS
    api.cancel(job.id)
    assert worker.is_cancel_requested(job.id)
