"""server/worker_group.py: jobs from the real SQLite store run on a group of 2 gloo ranks
(CFG-parallel, tiny_1s); a bad job fails alone; a cancel stops every rank at the same step;
the group stops on the stop event."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

from model.options import RuntimeOptions
from server.jobs import JobStatus, NewJob, open_store
from server.jobs.base import CANCELLED
from server.schemas import T2V_APP, OviInput
from server.settings import ServerSettings
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
