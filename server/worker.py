"""The worker: loads the pipeline once, then claims and runs one job at a time.

The only server module that touches `model`, and only inside functions that run in the worker
process: the API process imports this file for `WorkerSupervisor` (which spawns the workers)
without ever importing torch.

- `pipeline_kwargs` is the one place a fal request becomes pipeline keyword arguments.
- A failing job (bad image, bad value, CUDA OOM, any exception) is COMPLETED with an error and
  the worker carries on; `classify_failure` decides its status code and `error_type`.
- Cancellation is checked between denoising steps (`should_cancel`); a clean shutdown also
  stops the running job there and puts it back in the queue without using an attempt.
- Health: the worker heartbeats `warming` while loading, `ready` after, from a thread, so a long
  step never looks like a dead worker.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.jobs.base import CANCELLED, Job, JobError, JobStore, WorkerInfo, WorkerState
from server.schemas import I2V_APP, T2V_APP
from server.settings import ServerSettings

if TYPE_CHECKING:
    from server.storage import LocalStorage

log = logging.getLogger(__name__)


# --- request -> pipeline ------------------------------------------------------------------------


def pipeline_kwargs(app: str, params: dict[str, Any], image: Any = None) -> dict[str, Any]:
    """The one mapping from a validated fal input (`schemas.Ovi*Input` as a dict) to
    `OviPipeline.__call__` keyword arguments.

    fal's `resolution` is "WxH" (`992x512` = 992 wide, 512 high). Knobs fal does not expose
    (solver, shift, guidance, SLG) keep the variant's defaults.
    """
    kwargs: dict[str, Any] = {
        "prompt": params["prompt"],
        "image": image,
        "negative_prompt": params.get("negative_prompt"),
        "audio_negative_prompt": params.get("audio_negative_prompt"),
        "steps": params.get("num_inference_steps"),
        "seed": params.get("seed"),
    }
    if app == T2V_APP:
        width, height = (int(v) for v in params.get("resolution", "992x512").split("x"))
        kwargs.update(height=height, width=width)
    elif app != I2V_APP:
        raise ValueError(f"unknown app {app!r}")
    return kwargs


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
    storage: LocalStorage
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

    def finish(**kwargs: Any) -> None:
        if not store.complete(job.id, ctx.worker_id, **kwargs):
            log.warning("job %s was taken from this worker before it finished", job.id)

    ctx.on_job(job.id)
    try:
        image = None
        if job.app == I2V_APP:
            data = store.attachment(job.id, "image")
            if data is None:
                raise ValueError("the request's image is missing from the store")
            image = load_image(data)
        kwargs = pipeline_kwargs(job.app, job.input, image)
        store.append_log(job.id, f"Generating ({job.input.get('num_inference_steps')} steps)")
        out = pipe(**kwargs, callback=on_step, should_cancel=should_cancel)
        inference_time = time.perf_counter() - started
        store.append_log(job.id, "Encoding MP4")
        ctx.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.tmp_dir / f"{job.id}.mp4"
        try:
            write_mp4(path, out.video, out.audio, fps=out.fps, sample_rate=out.sample_rate)
            stored = ctx.storage.save(
                path.read_bytes(),
                content_type="video/mp4",
                file_name=f"{job.id}.mp4",
                kind="outputs",
            )
        finally:
            path.unlink(missing_ok=True)
        result = {
            "video": {
                "url": stored.url_path,
                "content_type": "video/mp4",
                "file_name": stored.file_name,
                "file_size": stored.file_size,
            },
            "seed": int(out.seed),
        }
        total = time.perf_counter() - started
        store.append_log(job.id, f"Done in {total:.1f}s (seed {out.seed})")
        finish(result=result, metrics={"inference_time": round(inference_time, 3)})
    except GenerationCancelled:
        if user_cancelled or not ctx.stopping():
            store.append_log(job.id, "Cancelled", source="SYSTEM")
            finish(error=CANCELLED, metrics={"inference_time": _elapsed(started)})
        else:
            store.release(job.id, ctx.worker_id)
    except Exception as exc:  # a job's failure is recorded, never fatal to the worker
        error = classify_failure(exc)
        if error.status_code >= 500:
            log.exception("job %s failed", job.id)
        else:
            log.info("job %s rejected: %s", job.id, error.message)
        store.append_log(job.id, error.message, level="ERROR", source="SYSTEM")
        finish(error=error, metrics={"inference_time": _elapsed(started)})
        if "memory" in error.message.lower():
            _free_accelerator_memory()
    finally:
        ctx.on_job(None)


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 3)


# --- the worker loop ----------------------------------------------------------------------------


def load_pipeline(settings: ServerSettings, device: str | None = None) -> Any:
    """The pipeline this deployment serves: a random-weight preset or a real variant."""
    from model.pipeline import OviPipeline

    device = device or settings.device
    modes = dict(
        batch_cfg=settings.batch_cfg,
        block_offload=settings.block_offload,
        fp8_compute=settings.fp8_compute,
    )
    if settings.preset:
        return OviPipeline.from_preset(settings.preset, device=device, **modes)
    return OviPipeline.from_pretrained(
        settings.weights_dir,
        variant=settings.variant,
        device=device,
        cpu_offload=settings.cpu_offload,
        offload_text_encoder=settings.offload_text_encoder,
        fp8=settings.fp8,
        **modes,
    )


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

    def stop(self) -> None:
        self._stop.set()

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
    pipeline: Any = None,
) -> None:
    """Load the pipeline, then claim and run jobs until `stop_event` is set."""
    from server.jobs.sqlite import SqliteJobStore
    from server.storage import LocalStorage

    stop = stop_event or threading.Event()
    store = store or SqliteJobStore(settings.db_path)
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
            storage=LocalStorage(settings.files_dir),
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


# --- the supervisor (runs in the API process) ---------------------------------------------------


@dataclass
class _Slot:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    worker_id: str = ""
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class WorkerSupervisor:
    """Keeps `settings.workers` worker processes alive (multiprocessing "spawn").

    A worker that dies has its running job re-queued once (then failed) and is restarted, with
    backoff when it keeps dying early (e.g. the weights do not load).
    """

    def __init__(
        self,
        settings: ServerSettings,
        store: JobStore,
        *,
        target: Callable[..., None] = worker_process_main,
    ) -> None:
        self.settings = settings
        self.store = store
        self.target = target
        self._ctx = multiprocessing.get_context("spawn")
        self._stop_event = self._ctx.Event()
        self._stopping = threading.Event()
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._thread = threading.Thread(target=self._monitor, name="ovi-supervisor", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self.reap_dead_local_workers()
        for slot in self._slots:
            self._spawn(slot)
        self._thread.start()

    def reap_dead_local_workers(self) -> None:
        """Workers registered from this host whose process is gone (a crashed previous run):
        their jobs are recovered now rather than after the staleness timeout."""
        host = socket.gethostname()
        dead = [
            w.id for w in self.store.workers() if w.host == host and w.pid and not _pid_alive(w.pid)
        ]
        if dead:
            recovered = self.store.recover(dead, max_attempts=self.settings.max_attempts)
            log.warning("recovered %d job(s) of %d dead worker(s)", len(recovered), len(dead))

    def _spawn(self, slot: _Slot) -> None:
        slot.worker_id = (
            f"{socket.gethostname()}-{os.getpid()}-w{slot.index}-{uuid.uuid4().hex[:6]}"
        )
        slot.process = self._ctx.Process(
            target=self.target,
            args=(self.settings, slot.worker_id, slot.index, self._stop_event),
            name=f"ovi-worker-{slot.index}",
            daemon=True,
        )
        slot.process.start()
        slot.started_at = time.monotonic()
        log.info("started worker %s (pid %s)", slot.worker_id, slot.process.pid)

    def _monitor(self) -> None:
        while not self._stopping.wait(0.25):
            with self._lock:
                for slot in self._slots:
                    self._check(slot)

    def _check(self, slot: _Slot) -> None:
        if self._stopping.is_set():
            return
        process = slot.process
        if process is not None and process.is_alive():
            return
        now = time.monotonic()
        if process is not None:
            log.error("worker %s exited with code %s", slot.worker_id, process.exitcode)
            recovered = self.store.recover(
                [slot.worker_id], max_attempts=self.settings.max_attempts
            )
            if recovered:
                log.warning("re-queued or failed: %s", ", ".join(recovered))
            lived = now - slot.started_at
            slot.failures = 0 if lived > 60 else slot.failures + 1
            slot.restart_at = now + min(60.0, 0.5 * 2 ** max(0, slot.failures - 1))
            slot.process = None
        if now >= slot.restart_at:
            self._spawn(slot)

    def alive(self) -> list[str]:
        return [s.worker_id for s in self._slots if s.process is not None and s.process.is_alive()]

    def stop(self, grace_s: float | None = None) -> None:
        """Ask workers to stop (a running job goes back to the queue), then make sure."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._stopping.is_set() and self._stop_event is None:
            return  # already stopped
        self._stopping.set()
        self._stop_event.set()
        if self._thread.is_alive():
            self._thread.join(2)
        deadline = time.monotonic() + grace
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            if process.is_alive():
                log.warning("worker %s did not stop in time; terminating", slot.worker_id)
                process.terminate()
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join(5)
            self.store.recover([slot.worker_id], max_attempts=self.settings.max_attempts)
            process.close()
            slot.process = None
        # Drop the Event's semaphores now: left for interpreter exit, the resource tracker
        # reports them as leaked.
        self._stop_event = None  # type: ignore[assignment]
        gc.collect()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
