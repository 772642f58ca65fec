"""server/worker_group.py: jobs from the real SQLite store run on a group of 2 gloo ranks
(CFG-parallel, tiny_1s); a bad job fails alone; a cancel stops every rank at the same step;
the group stops on the stop event, on SIGTERM, and follows a SIGKILLed worker process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

from model.options import RuntimeOptions
from server.jobs import JobStatus, NewJob, open_store
from server.jobs.base import CANCELLED
from server.schemas import T2V_APP, OviInput
from server.settings import ServerSettings
from server.supervisor import pid_alive, worker_main
from server.worker_group import group_gpus, run_worker_group


def t2v(**kw) -> dict:
    return OviInput(prompt="a cat", **kw).model_dump(mode="json")


def test_group_runs_jobs_and_stops(tmp_path: Path) -> None:
    settings = ServerSettings(
        data_dir=tmp_path, preset="tiny_1s", device="cpu", cfg_parallel=True, world_size=2,
        poll_interval_s=0.05, heartbeat_interval_s=0.2,
    )  # fmt: skip
    store = open_store(settings.job_store_url)
    job = store.submit(
        NewJob(
            app=T2V_APP,
            input=OviInput(prompt="a cat", seed=3, num_inference_steps=2).model_dump(mode="json"),
        )
    )
    bad = store.submit(
        NewJob(
            app=T2V_APP,
            input={**OviInput(prompt="a cat").model_dump(mode="json"), "num_inference_steps": 0},
        )
    )
    stop = multiprocessing.get_context("spawn").Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_worker_group(settings, "group-worker", stop_event=stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.time() + 240
        while not (store.get(job.id).done and store.get(bad.id).done) and time.time() < deadline:
            if failure:
                break
            time.sleep(0.1)
        # a cancel during a long clip: rank 0 decides, every rank stops at the same step
        long = store.submit(NewJob(app=T2V_APP, input={**t2v(), "num_inference_steps": 1000}))
        while store.get(long.id).status != JobStatus.IN_PROGRESS and time.time() < deadline:
            time.sleep(0.05)
        store.cancel(long.id)
        after = store.submit(NewJob(app=T2V_APP, input=t2v(num_inference_steps=1)))
        while not store.get(after.id).done and time.time() < deadline and not failure:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and not failure, failure
    done = store.get(job.id)
    assert done.error is None and done.result["video"]["file_size"] > 0
    assert store.get(bad.id).error is not None  # a bad job fails alone; the group went on
    assert store.get(long.id).error == CANCELLED
    assert store.get(after.id).result["video"]["file_size"] > 0  # the group went on in step
    assert store.workers() == []


def test_group_gpus_per_worker() -> None:
    settings = ServerSettings(sp_degree=2, gpus_per_worker=4, device="cuda")
    assert settings.runtime == RuntimeOptions(sp_degree=2, device="cuda")
    assert group_gpus(ServerSettings(sp_degree=2, gpus="2,3"), 0) == [2, 3]
    assert group_gpus(ServerSettings(sp_degree=2, world_size=2), 1) is None


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (the ranks are the forkserver's children, not its)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = _ppid(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _all_gone(pids: set[int], within_s: float) -> set[int]:
    """The pids of `pids` still running after `within_s` seconds (zombies count as gone)."""
    deadline = time.monotonic() + within_s
    while True:
        alive = {p for p in pids if pid_alive(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _start_group(settings: ServerSettings, store, job_id: str) -> tuple:
    proc = multiprocessing.get_context("spawn").Process(
        target=worker_main, args=(settings, "group-stop", 0), daemon=True
    )
    proc.start()
    deadline = time.monotonic() + 240
    while store.get(job_id).status != JobStatus.IN_PROGRESS and time.monotonic() < deadline:
        assert proc.is_alive()
        time.sleep(0.1)
    assert store.get(job_id).status == JobStatus.IN_PROGRESS
    ranks = _descendants(proc.pid)
    assert len(ranks) >= 3, ranks  # the forkserver and its 2 ranks (at least)
    return proc, ranks


def test_group_stops_on_sigterm_and_follows_a_killed_worker(tmp_path: Path) -> None:
    """SIGKILL of the worker process: its ranks (forkserver children) release the job and end
    within the grace; SIGTERM: the job is released (no attempt used) and every rank ends; a
    follower's death ends the group (exit code 1) leaving the job to the recovery."""
    settings = ServerSettings(
        data_dir=tmp_path, preset="tiny_1s", device="cpu", cfg_parallel=True, world_size=2,
        poll_interval_s=0.05, heartbeat_interval_s=0.2, shutdown_grace_s=30.0,
    )  # fmt: skip
    store = open_store(settings.job_store_url)
    job = store.submit(NewJob(app=T2V_APP, input={**t2v(), "num_inference_steps": 1000}))
    procs = []
    try:
        proc, ranks = _start_group(settings, store, job.id)
        procs.append(proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert _all_gone(ranks, within_s=60) == set()  # bounded by the lifeline's grace
        released = store.get(job.id)
        assert released.status == JobStatus.IN_QUEUE, (released.error, store.logs(job.id))
        assert released.attempts == 0

        proc, ranks = _start_group(settings, store, job.id)
        procs.append(proc)
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(60)  # the watchdog ends it after drain_timeout_s + shutdown_grace_s
        assert proc.exitcode == 0
        assert _all_gone(ranks, within_s=15) == set()
        released = store.get(job.id)
        assert released.status == JobStatus.IN_QUEUE and released.attempts == 0
        assert store.workers() == []

        # a follower rank dies: the group goes down, the job is not failed but recovered
        proc, ranks = _start_group(settings, store, job.id)
        procs.append(proc)
        leader = store.workers()[0].pid  # rank 0 registers the worker
        follower = next(p for p in _descendants(_ppid(leader)) if p != leader)
        os.kill(follower, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode == 1
        assert _all_gone(ranks, within_s=15) == set()
        held = store.get(job.id)
        assert held.status == JobStatus.IN_PROGRESS and held.error is None
        assert store.recover(["group-stop"], max_attempts=3) == [job.id]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        store.close()
