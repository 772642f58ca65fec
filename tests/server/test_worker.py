"""server/worker.py: the request->pipeline mapping, one job (real tiny pipeline), the worker loop
and the process supervisor (crash -> re-queue once -> fail)."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.jobs import JobStatus, NewJob, SqliteJobStore
from server.jobs.base import CANCELLED, WORKER_LOST
from server.schemas import I2V_APP, T2V_APP, OviImageToVideoInput, OviInput
from server.settings import ServerSettings
from server.storage import LocalStorage
from server.worker import (
    JobContext,
    WorkerSupervisor,
    classify_failure,
    pipeline_kwargs,
    run_job,
    run_worker,
)


def t2v(**kw) -> dict:
    return OviInput(prompt="a cat says hi", **kw).model_dump(mode="json")


def i2v(**kw) -> dict:
    return OviImageToVideoInput(prompt="a cat", image_url="data:,", **kw).model_dump(mode="json")


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def store(tmp_path: Path) -> SqliteJobStore:
    s = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


@pytest.fixture()
def ctx(store: SqliteJobStore, tmp_path: Path) -> JobContext:
    return JobContext(
        store=store,
        storage=LocalStorage(tmp_path / "files"),
        worker_id="w",
        tmp_dir=tmp_path / "tmp",
    )


# --- mapping and classification ---


def test_pipeline_kwargs_text_to_video() -> None:
    kwargs = pipeline_kwargs(T2V_APP, t2v(resolution="512x992", seed=3, num_inference_steps=7))
    assert kwargs == {
        "prompt": "a cat says hi",
        "image": None,
        "negative_prompt": "jitter, bad hands, blur, distortion",
        "audio_negative_prompt": "robotic, muffled, echo, distorted",
        "steps": 7,
        "seed": 3,
        "height": 992,  # "WxH": 512 wide, 992 high
        "width": 512,
    }


def test_pipeline_kwargs_image_to_video() -> None:
    image = object()
    kwargs = pipeline_kwargs(I2V_APP, i2v(), image)
    assert kwargs["image"] is image and kwargs["steps"] == 30 and kwargs["seed"] is None
    assert "height" not in kwargs and "width" not in kwargs
    with pytest.raises(ValueError):
        pipeline_kwargs("fal-ai/other", t2v())


def test_classify_failure() -> None:
    from model.preprocess import ImageLoadError

    err = classify_failure(ImageLoadError("cannot identify image file"))
    assert err.status_code == 422 and err.error_type == "image_load_error"
    assert err.detail[0]["loc"] == ["body", "image_url"]
    assert err.message.startswith("Could not load image from url: ")
    err = classify_failure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert err.status_code == 500 and "Out of GPU memory" in err.message
    err = classify_failure(ValueError("steps must be positive"))
    assert err.status_code == 422 and err.detail[0]["msg"] == "steps must be positive"
    err = classify_failure(KeyError("x"))
    assert err.status_code == 500 and err.error_type == "runner_server_error"


# --- one job with the real tiny pipeline ---


def test_run_job_text_to_video(tiny_pipeline, store: SqliteJobStore, ctx: JobContext) -> None:
    job = store.submit(NewJob(app=T2V_APP, input=t2v(num_inference_steps=2, seed=11)))
    run_job(tiny_pipeline, store.claim("w"), ctx)
    done = store.get(job.id)
    assert done.status is JobStatus.COMPLETED and done.error is None, done.error
    video = done.result["video"]
    assert done.result["seed"] == 11
    assert video["content_type"] == "video/mp4" and video["url"].startswith("/files/outputs/")
    path = ctx.storage.resolve(video["url"])
    assert path.stat().st_size == video["file_size"] > 0
    messages = [e.message for e in store.logs(job.id)]
    assert any(m.startswith("Step 1/2") for m in messages)
    assert any(m.startswith("Step 2/2") for m in messages)
    assert done.metrics["inference_time"] > 0
    assert not any(ctx.tmp_dir.iterdir())  # the temporary MP4 is gone


def test_run_job_bad_image_fails_the_job_only(
    tiny_pipeline, store: SqliteJobStore, ctx: JobContext
) -> None:
    job = store.submit(NewJob(app=I2V_APP, input=i2v(), attachments={"image": b"not an image"}))
    run_job(tiny_pipeline, store.claim("w"), ctx)
    done = store.get(job.id)
    assert done.error.status_code == 422 and done.error.error_type == "image_load_error"


def test_run_job_cancel_and_shutdown(tiny_pipeline, store: SqliteJobStore, ctx: JobContext) -> None:
    job = store.submit(NewJob(app=I2V_APP, input=i2v(), attachments={"image": png_bytes()}))
    store.claim("w")
    store.cancel(job.id)  # running: the flag is seen before the first step
    run_job(tiny_pipeline, store.get(job.id), ctx)
    assert store.get(job.id).error == CANCELLED

    job = store.submit(NewJob(app=T2V_APP, input=t2v()))
    claimed = store.claim("w")
    stopping = JobContext(**{**ctx.__dict__, "stopping": lambda: True})
    run_job(tiny_pipeline, claimed, stopping)
    back = store.get(job.id)
    assert back.status is JobStatus.IN_QUEUE and back.attempts == 0


# --- the loop, with a fake pipeline ---


class FakePipeline:
    def __call__(
        self, prompt: str, image=None, *, seed=None, callback=None, should_cancel=None, **kw
    ):
        from model.pipeline import OviOutput, StepInfo

        if prompt == "explode":
            raise RuntimeError("boom")
        for step in range(1, (kw.get("steps") or 2) + 1):
            if should_cancel and should_cancel():
                from model.pipeline import GenerationCancelled

                raise GenerationCancelled()
            if callback:
                callback(StepInfo(step, kw.get("steps") or 2, 0.0))
        video = np.zeros((5, 32, 32, 3), np.uint8)
        audio = np.zeros(1600, np.float32)
        return OviOutput(video=video, audio=audio, seed=seed or 1, height=32, width=32)


def test_run_worker_loop_carries_on_after_failures(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path, poll_interval_s=0.01, heartbeat_interval_s=0.05)
    store = SqliteJobStore(settings.db_path)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(settings, "loop-worker"),
        kwargs={"stop_event": stop, "pipeline": FakePipeline()},
    )
    bad = store.submit(NewJob(app=T2V_APP, input={**t2v(), "prompt": "explode"}))
    good = store.submit(NewJob(app=T2V_APP, input=t2v(num_inference_steps=1)))
    thread.start()
    try:
        deadline = time.time() + 20
        while not store.get(good.id).done and time.time() < deadline:
            time.sleep(0.02)
        assert [w.state for w in store.workers()] == ["ready"]
    finally:
        stop.set()
        thread.join(10)
    assert store.get(bad.id).error.message == "Generation failed: RuntimeError: boom"
    assert store.get(good.id).result["video"]["file_size"] > 0
    assert store.workers() == []  # unregistered on the way out


# --- the supervisor, with worker processes that crash ---


def crashing_worker(settings: ServerSettings, worker_id: str, slot: int, stop_event) -> None:
    """Spawned target: claim one job and die without a word."""
    store = SqliteJobStore(settings.db_path)
    from server.jobs.base import WorkerInfo

    store.heartbeat(
        WorkerInfo(id=worker_id, state="ready", heartbeat_at=time.time(), pid=os.getpid())
    )
    while not stop_event.is_set():
        if store.claim(worker_id) is not None:
            os._exit(3)
        time.sleep(0.02)


def test_supervisor_requeues_once_then_fails(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path, workers=1, max_attempts=2)
    store = SqliteJobStore(settings.db_path)
    job = store.submit(NewJob(app=T2V_APP, input=t2v()))
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


# --- building the pipeline ---


def test_load_pipeline_passes_the_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.pipeline import OviPipeline
    from server.worker import load_pipeline

    seen = {}

    def from_pretrained(weights_dir, **kwargs):
        seen.update(kwargs, weights_dir=weights_dir)
        return "pipe"

    monkeypatch.setattr(OviPipeline, "from_pretrained", from_pretrained)
    settings = ServerSettings(
        weights_dir=Path("w"), variant="960x960_5s", cpu_offload=True, fp8=True,
        block_offload=True, fp8_compute=True, batch_cfg=True, offload_text_encoder=True,
    )  # fmt: skip
    assert load_pipeline(settings, device="cuda:1") == "pipe"
    assert seen == dict(
        weights_dir=Path("w"), variant="960x960_5s", device="cuda:1", cpu_offload=True,
        fp8=True, block_offload=True, fp8_compute=True, batch_cfg=True, offload_text_encoder=True,
    )  # fmt: skip


def test_load_pipeline_tiny_preset_with_block_offload() -> None:
    from model.optimize import BlockOffload
    from server.worker import load_pipeline

    pipe = load_pipeline(ServerSettings(preset="tiny", block_offload=True, batch_cfg=True))
    assert isinstance(pipe.fusion.offload, BlockOffload) and pipe.cpu_offload
    assert pipe.fast_path.block_offload and pipe.fast_path.batch_cfg
