"""The worker: loads the pipeline once, then claims and runs one job at a time.

The only server module that touches `model`, and only in the worker process: the API process
never imports this file (`server.supervisor` spawns processes that do). A worker shares nothing
with the API but the job store URL and the storage URL (`settings.job_store_url`,
`settings.storage_url`): it reads a job's input image from the storage by the key the job
keeps, and saves the output there.

- `sampling_params` is the one place a fal request becomes the clip's `SamplingParams`.
- A failing job (bad image, bad value, CUDA OOM, any exception) is COMPLETED with an error and
  the worker carries on; `classify_failure` decides its status code and `error_type`.
- Cancellation is checked between denoising steps (`should_cancel`); a clean shutdown also
  stops the running job there and puts it back in the queue without using an attempt.
- Health: the worker heartbeats `warming` while loading, `ready` after, from a thread, so a long
  step never looks like a dead worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from model.sampling import SamplingParams
from server.jobs import open_store
from server.jobs.base import CANCELLED, Job, JobError, JobStore, Outcome, WorkerInfo, WorkerState
from server.schemas import I2V_APP, T2V_APP
from server.settings import ServerSettings
from server.storage import Storage, open_storage, read_all

log = logging.getLogger(__name__)


# --- request -> pipeline ------------------------------------------------------------------------


def sampling_params(app: str, request: dict[str, Any], defaults: SamplingParams) -> SamplingParams:
    """The one mapping from a validated fal input (`schemas.Ovi*Input` as a dict) to the
    `SamplingParams` of the clip: the variant's `defaults` with the request's values.

    fal's `resolution` is "WxH" (`992x512` = 992 wide, 512 high): this is the one place it is
    parsed. Knobs fal does not expose (solver, shift, guidance, SLG) keep the defaults; `noise`
    is our one extra input (`schemas`).
    """
    values: dict[str, Any] = {
        "video_negative_prompt": request.get("negative_prompt"),
        "audio_negative_prompt": request.get("audio_negative_prompt"),
        "steps": request.get("num_inference_steps"),
        "seed": request.get("seed"),  # negative seeds as given (torch takes them mod 2**64)
        "noise": request.get("noise"),  # ours, not fal's; None: the worker's runtime default
    }
    if app == T2V_APP:
        width, height = (int(v) for v in request.get("resolution", "992x512").split("x"))
        values.update(height=height, width=width)
    elif app != I2V_APP:
        raise ValueError(f"unknown app {app!r}")
    return defaults.replace(**values)


def image_error(message: str) -> JobError:
    return JobError(
        message=message,
        error_type="image_load_error",
        status_code=422,
        detail=[{"loc": ["body", "image_url"], "msg": message, "type": "image_load_error"}],
    )


def classify_failure(exc: BaseException) -> JobError:
    """A job's exception as the error its result URL will answer."""
    from model.preprocess import ImageLoadError

    if isinstance(exc, ImageLoadError):
        return image_error(f"Could not load image from url: {exc}")
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return JobError(
            f"Out of GPU memory while generating: {text}".strip(), "runner_server_error", 500
        )
    if isinstance(exc, ValueError):
        return JobError(
            text,
            "validation_error",
            422,
            detail=[{"loc": ["body"], "msg": text, "type": "value_error"}],
        )
    return JobError(f"Generation failed: {name}: {text}", "runner_server_error", 500)


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # best effort after an OOM
        log.exception("could not empty the CUDA cache")


# --- one job ------------------------------------------------------------------------------------


@dataclass
class JobContext:
    """What `run_job` needs besides the pipeline and the job."""

    store: JobStore
    storage: Storage
    worker_id: str
    tmp_dir: Path
    stopping: Callable[[], bool] = lambda: False  # shutdown: release instead of finishing
    on_job: Callable[[str | None], None] = field(default=lambda _id: None)


def run_job(pipe: Any, job: Job, ctx: JobContext) -> None:
    """Run one claimed job to COMPLETED (result or error), or release it on shutdown.

    Never raises for a job's own failure: the worker must carry on with the next one.
    """
    from model.media import write_mp4
    from model.pipeline import GenerationCancelled
    from model.preprocess import load_image

    store = ctx.store
    started = time.perf_counter()
    user_cancelled = False

    def should_cancel() -> bool:
        nonlocal user_cancelled
        if store.is_cancel_requested(job.id):
            user_cancelled = True
            return True
        return ctx.stopping()

    def on_step(info: Any) -> None:
        store.append_log(
            job.id, f"Step {info.step}/{info.total} ({info.elapsed:.1f}s)", source="USER"
        )

    def finish(outcome: Outcome) -> None:
        if not store.complete(job.id, ctx.worker_id, outcome):
            log.warning("job %s was taken from this worker before it finished", job.id)
            return
        for key in job.input_files.values():  # done with for good: no retry will read them
            try:
                ctx.storage.delete(key)
            except Exception:
                log.exception("could not delete input %s of job %s", key, job.id)

    ctx.on_job(job.id)
    try:
        image = None
        if job.app == I2V_APP:
            image = load_image(input_image(job, ctx.storage))
        params = sampling_params(job.app, job.input, pipe.preset.sampling)
        store.append_log(job.id, f"Generating ({params.steps} steps)")
        out = pipe(
            job.input["prompt"], image, params=params, callback=on_step, should_cancel=should_cancel
        )
        inference_time = time.perf_counter() - started
        store.append_log(job.id, "Encoding MP4")
        ctx.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.tmp_dir / f"{job.id}.mp4"
        try:
            write_mp4(path, out.video, out.audio, fps=out.fps, sample_rate=out.sample_rate)
            stored = ctx.storage.save(
                path.read_bytes(),
                kind="outputs",
                content_type="video/mp4",
                file_name=f"{job.id}.mp4",
            )
        finally:
            path.unlink(missing_ok=True)
        result = {
            "video": {
                "url": stored.url,
                "content_type": "video/mp4",
                "file_name": stored.file_name,
                "file_size": stored.file_size,
            },
            "seed": int(out.seed),
        }
        total = time.perf_counter() - started
        store.append_log(job.id, f"Done in {total:.1f}s (seed {out.seed})")
        finish(Outcome(result=result, metrics={"inference_time": round(inference_time, 3)}))
    except GenerationCancelled:
        if user_cancelled or not ctx.stopping():
            store.append_log(job.id, "Cancelled", source="SYSTEM")
            finish(Outcome(error=CANCELLED, metrics={"inference_time": _elapsed(started)}))
        else:
            store.release(job.id, ctx.worker_id)
    except Exception as exc:  # a job's failure is recorded, never fatal to the worker
        error = classify_failure(exc)
        if error.status_code >= 500:
            log.exception("job %s failed", job.id)
        else:
            log.info("job %s rejected: %s", job.id, error.message)
        store.append_log(job.id, error.message, level="ERROR", source="SYSTEM")
        finish(Outcome(error=error, metrics={"inference_time": _elapsed(started)}))
        if "memory" in error.message.lower():
            _free_accelerator_memory()
    finally:
        ctx.on_job(None)


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def input_image(job: Job, storage: Storage) -> bytes:
    """The bytes of the job's image, by the storage key it keeps; a ValueError (a 422 for the
    client) if it is gone."""
    key = job.input_files.get("image")
    if key is None:  # queued by a version that kept images in the job database
        raise ValueError("the request's image is missing (queued before an upgrade); submit again")
    try:
        return read_all(storage, key)
    except FileNotFoundError:
        raise ValueError(
            "the request's image is no longer stored (expired); submit again"
        ) from None


# --- the worker loop ----------------------------------------------------------------------------


def load_pipeline(settings: ServerSettings, device: str | None = None) -> Any:
    """The pipeline this deployment serves (`settings.source` with `settings.runtime`);
    `device` overrides the setting (one GPU per worker)."""
    from model.pipeline import load_pipeline as load

    return load(settings.source, settings.runtime, device)


class Heartbeat:
    """Reports this worker's state every `interval` s from a daemon thread; notices when the
    parent (the API process) is gone and asks the worker to stop."""

    def __init__(self, store: JobStore, worker_id: str, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.info = WorkerInfo(
            id=worker_id,
            state="warming",
            heartbeat_at=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
        )
        self.parent_gone = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovi-heartbeat", daemon=True)

    def set(self, state: WorkerState | None = None, **changes: Any) -> None:
        if state is not None:
            changes["state"] = state
        self.info = WorkerInfo(**{**self.info.__dict__, **changes, "heartbeat_at": time.time()})
        self.beat()

    def beat(self) -> None:
        try:
            self.store.heartbeat(WorkerInfo(**{**self.info.__dict__, "heartbeat_at": time.time()}))
        except Exception:
            log.exception("heartbeat failed")

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        parent = multiprocessing.parent_process()
        while not self._stop.wait(self.interval):
            if parent is not None and not parent.is_alive():
                log.warning("API process is gone; stopping worker %s", self.info.id)
                self.parent_gone.set()
            self.beat()


def run_worker(
    settings: ServerSettings,
    worker_id: str,
    *,
    stop_event: EventType | threading.Event | None = None,
    device: str | None = None,
    store: JobStore | None = None,
    storage: Storage | None = None,
    pipeline: Any = None,
) -> None:
    """Load the pipeline, then claim and run jobs until `stop_event` is set. The store and the
    storage default to the ones the settings' URLs name."""
    stop = stop_event or threading.Event()
    own_store, own_storage = store is None, storage is None
    store = store or open_store(settings.job_store_url)
    storage = storage or open_storage(settings.storage_url)
    heartbeat = Heartbeat(store, worker_id, settings.heartbeat_interval_s)
    heartbeat.start()

    parent = multiprocessing.parent_process()  # None when run by `ovi worker`

    def stopping() -> bool:
        if stop.is_set() or heartbeat.parent_gone.is_set():
            return True
        return parent is not None and not parent.is_alive()  # checked between steps too

    try:
        if pipeline is None:
            log.info("worker %s: loading %s", worker_id, settings.model_name)
            t0 = time.perf_counter()
            try:
                pipeline = load_pipeline(settings, device)
            except Exception as exc:
                heartbeat.set("failed", detail=f"{type(exc).__name__}: {exc}")
                raise
            log.info("worker %s: ready in %.1fs", worker_id, time.perf_counter() - t0)
        heartbeat.set("ready", detail="")
        ctx = JobContext(
            store=store,
            storage=storage,
            worker_id=worker_id,
            tmp_dir=settings.tmp_dir,
            stopping=stopping,
            on_job=lambda job_id: heartbeat.set(job_id=job_id),
        )
        while not stopping():
            job = store.claim(worker_id)
            if job is None:
                stop.wait(settings.poll_interval_s)
                continue
            log.info("worker %s: running %s (%s)", worker_id, job.id, job.app)
            run_job(pipeline, job, ctx)
    finally:
        heartbeat.stop()
        try:
            store.remove_worker(worker_id)
        except Exception:
            log.exception("could not unregister worker %s", worker_id)
        if own_storage:
            storage.close()
        if own_store:
            store.close()


def worker_process_main(
    settings: ServerSettings, worker_id: str, slot: int, stop_event: EventType
) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker[{slot}] %(name)s: %(message)s",
    )
    device = settings.device
    if settings.workers > 1 and (device or "cuda").startswith("cuda") and ":" not in (device or ""):
        device = f"cuda:{slot}"  # one worker per GPU
    try:
        run_worker(settings, worker_id, stop_event=stop_event, device=device)
    except KeyboardInterrupt:
        pass
