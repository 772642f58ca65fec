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
- Stopping (`StopRequest`): SIGTERM or SIGINT (to the worker alone or to the whole process
  group), or the parent's death, stop the claiming; the running job may finish for
  `drain_timeout_s`, then is released at its next step. A stop while the model loads ends at
  once. Exit code 0 means a clean stop.
- Job-store faults (full disk, a locked or broken file) never end the worker: claims back off
  and retry, log lines are best effort, and a finished job's record is retried until written.
- Previews: `settings.previews` times per clip, a PNG of the current estimate (a fitted
  latent-to-RGB map, `model.preview`; no VAE decode) is saved as an output and linked from the
  job's logs (`Preview 6/50: <url>`), where the playground (and any fal client) reads it.
- Health: the worker heartbeats `warming` while loading, `ready` after, from a thread, so a long
  step never looks like a dead worker; a model that cannot load leaves it `failed` (with the
  reason) and idle until stopped, instead of restarting in a loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.presets import fast_sampling
from model.sampling import SamplingParams
from server.jobs import StoreUnavailableError, open_store
from server.jobs.base import CANCELLED, Job, JobError, JobStore, Outcome, WorkerInfo, WorkerState
from server.logs import REQUEST_ID, configure_logging
from server.lora_inputs import resolve_lora_files
from server.metrics import StepTimer, WorkerMetrics
from server.readiness import is_disk_full
from server.schemas import I2V_APP, T2V_APP
from server.settings import ServerSettings
from server.storage import Storage, open_storage, owned_file_id, read_all

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


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def classify_failure(exc: BaseException) -> JobError:
    """A job's exception as the error its result URL will answer."""
    from model.preprocess import ImageLoadError

    if isinstance(exc, ImageLoadError):
        return image_error(f"Could not load image from url: {exc}")
    name = type(exc).__name__
    text = str(exc)
    if is_disk_full(exc) or (isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else text
        return JobError(f"Could not write the output: {reason}", "output_write_error", 507)
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
    metrics: WorkerMetrics | None = None
    previews: int = 0  # previews per clip (`settings.previews`)
    preview: Any = None  # the worker's fitted `model.preview.LatentPreview` (made by `fit_preview`)
    lora_dir: Path | None = None  # where requests' `lora` paths live (`settings.lora_dir`)


# --- previews -----------------------------------------------------------------------------------


def preview_steps(total: int, count: int) -> set[int]:
    """The 1-based steps after which a preview is saved: `count` about evenly spaced, the last
    step always among them (none when `count` is 0)."""
    if count <= 0 or total <= 0:
        return set()
    return {max(1, round(total * (i + 1) / min(count, total))) for i in range(min(count, total))}


def fit_preview(pipe: Any) -> Any:
    """The latent-to-RGB map fitted to the pipeline's VAE, or None (logged) if it cannot be."""
    from model.preview import LatentPreview

    if getattr(pipe, "video_vae", None) is None:  # a stand-in pipeline (tests): no previews
        return None
    try:
        t0 = time.perf_counter()
        preview = LatentPreview.fit(pipe.video_vae)
        log.info("preview map fitted in %.2fs", time.perf_counter() - t0)
        return preview
    except Exception:
        log.exception("could not fit the preview map; previews are off")
        return None


def save_preview(job: Job, ctx: JobContext, file_id: str, info: Any) -> None:
    """Save the preview of step `info` under `file_id` and link it from the job's logs. A
    preview is a nicety: its failure is logged and never fails the job."""
    from model.preview import png_bytes

    try:
        png = png_bytes(ctx.preview(info.denoised))
        stored = ctx.storage.save(
            png,
            kind="outputs",
            content_type="image/png",
            file_name=f"preview-{info.step}.png",
            file_id=file_id,
        )
        url = job.base_url + stored.url if stored.url.startswith("/") else stored.url
        ctx.store.append_log(job.id, f"Preview {info.step}/{info.total}: {url}", source="USER")
    except Exception:
        log.exception("could not save a preview of job %s", job.id)


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
    steps = StepTimer(ctx.metrics)

    def note(message: str, **kw: Any) -> None:  # log lines are best effort on a failing store
        try:
            store.append_log(job.id, message, **kw)
        except Exception as exc:
            log.warning("job %s: could not store log line (%s)", job.id, exc)

    def should_cancel() -> bool:
        nonlocal user_cancelled
        try:
            if store.is_cancel_requested(job.id):
                user_cancelled = True
                return True
        except Exception as exc:  # cannot read the flag now; the next step asks again
            log.warning("job %s: cancel check failed (%s)", job.id, exc)
        return ctx.stopping()

    preview_at: set[int] = set()  # set once the step count is known
    preview_id = owned_file_id(job.user_id)  # /files may require the owner's key

    def on_step(info: Any) -> None:
        steps(info.elapsed)
        note(f"Step {info.step}/{info.total} ({info.elapsed:.1f}s)", source="USER")
        if info.step in preview_at and getattr(info, "denoised", None) is not None:
            save_preview(job, ctx, preview_id, info)

    def finish(outcome: Outcome, label: str, timings: dict[str, float] | None = None) -> None:
        if ctx.metrics is not None:
            ctx.metrics.observe_job(label, time.perf_counter() - started, timings)
        done = _retry_store(lambda: store.complete(job.id, ctx.worker_id, outcome), ctx, job.id)
        if done is None:
            return  # stopping with the store still failing: the job is recovered later
        if not done:
            log.warning("job %s was taken from this worker before it finished", job.id)
            return
        for key in job.input_files.values():  # done with for good: no retry will read them
            try:
                ctx.storage.delete(key)
            except Exception:
                log.exception("could not delete input %s of job %s", key, job.id)

    ctx.on_job(job.id)
    token = REQUEST_ID.set(job.id)  # every log line of this job carries its id
    try:
        image = None
        if job.app == I2V_APP:
            image = load_image(input_image(job, ctx.storage))
        params = sampling_params(job.app, job.input, pipe.preset.sampling)
        # few-step mode (the server's --fast, or the request's `fast` extra field): its LoRA is
        # distilled for these steps, guidance and shift, so the request's steps do not apply
        fast = bool(job.input.get("fast")) and not pipe.runtime.fast
        if pipe.runtime.fast or fast:
            params = fast_sampling(params, pipe.preset)
        from model.lora import LoraSpec  # torch: the worker's side only

        loras = [
            LoraSpec(path, scale)
            for path, scale in resolve_lora_files(
                job.input.get("lora") or [], ctx.lora_dir, ctx.storage, ctx.tmp_dir / "loras"
            )
        ]
        if ctx.preview is not None:
            preview_at.update(preview_steps(params.steps, ctx.previews))
        note(f"Generating ({params.steps} steps)")
        with pipe.adapters(loras, fast=fast) if loras or fast else contextlib.nullcontext():
            out = pipe(
                job.input["prompt"], image, params=params, callback=on_step,
                should_cancel=should_cancel,
            )  # fmt: skip
        inference_time = time.perf_counter() - started
        note("Encoding MP4")
        ctx.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.tmp_dir / f"{job.id}.mp4"
        timings = {**out.timings, "steps": float(steps.steps)}
        try:
            clock = time.perf_counter()
            write_mp4(path, out.video, out.audio, fps=out.fps, sample_rate=out.sample_rate)
            timings["mux"] = time.perf_counter() - clock
            stored = ctx.storage.save(
                path.read_bytes(),
                kind="outputs",
                content_type="video/mp4",
                file_name=f"{job.id}.mp4",
                file_id=owned_file_id(job.user_id),  # /files may require the owner's key
            )
        finally:
            path.unlink(missing_ok=True)
        if ctx.metrics is not None:
            ctx.metrics.storage_bytes.labels("outputs").inc(stored.file_size)
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
        note(f"Done in {total:.1f}s (seed {out.seed})")
        log.info(
            "job %s done in %.2fs", job.id, total, extra={"request_id": job.id, "duration_s": total}
        )
        for phase, seconds in timings.items():
            if phase != "steps":
                log.info(
                    "job %s %s %.3fs",
                    job.id,
                    phase,
                    seconds,
                    extra={"request_id": job.id, "phase": phase, "duration_s": seconds},
                )
        metrics = {"inference_time": round(inference_time, 3), **out.metrics}
        finish(Outcome(result=result, metrics=metrics), "ok", timings)
    except StoreUnavailableError:
        raise  # not the job's failure: the worker stops, and the job is recovered
    except GenerationCancelled:
        if user_cancelled or not ctx.stopping():
            note("Cancelled", source="SYSTEM")
            finish(
                Outcome(error=CANCELLED, metrics={"inference_time": _elapsed(started)}), "cancelled"
            )
        else:
            _retry_store(lambda: store.release(job.id, ctx.worker_id), ctx, job.id, tries=5)
    except Exception as exc:  # a job's failure is recorded, never fatal to the worker
        error = classify_failure(exc)
        if error.status_code >= 500:
            log.exception("job %s failed", job.id)
        else:
            log.info("job %s rejected: %s", job.id, error.message)
        note(error.message, level="ERROR", source="SYSTEM")
        finish(Outcome(error=error, metrics={"inference_time": _elapsed(started)}), "error")
        if "memory" in error.message.lower():
            _free_accelerator_memory()
    finally:
        REQUEST_ID.reset(token)
        ctx.on_job(None)


def _retry_store(
    call: Callable[[], bool], ctx: JobContext, job_id: str, *, tries: int | None = None
) -> bool | None:
    """`call()` (a store write that ends a job) retried with backoff while the store fails;
    None if it still fails once the worker is stopping (or after `tries`)."""
    delay, attempt = 0.2, 0
    while True:
        try:
            return call()
        except Exception as exc:
            attempt += 1
            if ctx.stopping() or (tries is not None and attempt >= tries):
                log.error("job %s: could not record its end in the job store: %s", job_id, exc)
                return None
            log.warning(
                "job %s: job store write failed (%s); retrying in %.1fs", job_id, exc, delay
            )
            time.sleep(delay)
            delay = min(5.0, delay * 2)


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


# A worker rides out a store outage this long inside a job (a Redis restart takes about a
# second); longer, it stops, so its heartbeat ends and the job is recovered. Between jobs it
# waits for the store with doubling pauses up to MAX_STORE_BACKOFF_S.
WORKER_STORE_RETRY_S = 30.0
MAX_STORE_BACKOFF_S = 5.0


def load_pipeline(settings: ServerSettings, device: str | None = None) -> Any:
    """The pipeline this deployment serves (`settings.source` with `settings.runtime`);
    `device` overrides the setting (one GPU per worker)."""
    from model.pipeline import load_pipeline as load

    return load(settings.source, settings.runtime, device)


class StopRequest:
    """When a worker stops: `is_set()` once asked (claim nothing more); `release_now()` once the
    running job must be released at its next step (`drain_s` after the request, at once for an
    `immediate` one). Safe to call from a signal handler. `event`, when given, is an outside
    stop flag (tests, embedding) that releases at once."""

    def __init__(self, drain_s: float = 0.0, event: threading.Event | None = None) -> None:
        self.drain_s = drain_s
        self.event = event
        self._flag = threading.Event()
        self.loading = False  # while True, a signal interrupts the model load
        self.requested_at: float | None = None
        self._release_at: float | None = None

    def request(self, *, immediate: bool = False) -> None:
        now = time.monotonic()
        if self.requested_at is None:
            self.requested_at = now
        release_at = now if immediate else self.requested_at + self.drain_s
        if self._release_at is None or release_at < self._release_at:
            self._release_at = release_at
        self._flag.set()

    def is_set(self) -> bool:
        if self.event is not None and self.event.is_set() and not self._flag.is_set():
            self.request(immediate=True)
        return self._flag.is_set()

    def release_now(self) -> bool:
        return (
            self.is_set() and self._release_at is not None and time.monotonic() >= self._release_at
        )

    def wait(self, timeout: float) -> bool:
        if self.event is None:
            return self._flag.wait(timeout)
        end = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < end:
            self._flag.wait(min(0.05, max(0.0, end - time.monotonic())))
        return self.is_set()


class Heartbeat:
    """Reports this worker's state every `interval` s from a daemon thread (a failing store is
    logged and tried again at the next beat)."""

    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        interval: float,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.metrics = metrics  # its snapshot rides on every heartbeat (server.metrics)
        self.info = WorkerInfo(
            id=worker_id,
            state="warming",
            heartbeat_at=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovi-heartbeat", daemon=True)

    def set(self, state: WorkerState | None = None, **changes: Any) -> None:
        if state is not None:
            changes["state"] = state
        self.info = WorkerInfo(**{**self.info.__dict__, **changes, "heartbeat_at": time.time()})
        self.beat()

    def beat(self) -> None:
        try:
            metrics = self.metrics.snapshot() if self.metrics is not None else []
            self.store.heartbeat(
                WorkerInfo(
                    **{**self.info.__dict__, "heartbeat_at": time.time(), "metrics": metrics}
                )
            )
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()


class Watchdog:
    """In a spawned worker: notices within half a second that the parent (the API process) is
    gone and stops the worker (releasing its job at the next step); and ends the process if a
    stop has not finished within `drain_s + grace_s` (a step that never returns), so a worker
    never outlives its server holding a GPU."""

    def __init__(self, stop: StopRequest, grace_s: float) -> None:
        self.stop = stop
        self.grace_s = grace_s
        self._thread = threading.Thread(target=self._run, name="ovi-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        parent = multiprocessing.parent_process()
        while True:
            time.sleep(0.5)
            if parent is not None and not parent.is_alive() and self.stop.requested_at is None:
                log.warning("API process is gone; stopping this worker")
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in the main thread
                self.stop.request(immediate=True)
            since = self.stop.requested_at
            if since is not None and time.monotonic() - since > self.stop.drain_s + self.grace_s:
                log.error("worker did not stop within its grace; exiting now")
                os._exit(1)


def install_stop_signals(stop: StopRequest) -> None:
    """SIGTERM and SIGINT request a graceful stop (the whole process group gets them from
    `docker stop`, systemd or Ctrl-C). While the model loads, the stop ends the load at once."""

    def handler(signum: int, frame: Any) -> None:
        first = stop.requested_at is None
        stop.request(immediate=not first and signum == signal.SIGINT)  # Ctrl-C twice: now
        if first:
            log.info("worker: %s, stopping", signal.Signals(signum).name)
        if stop.loading:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_worker(
    settings: ServerSettings,
    worker_id: str,
    *,
    stop_event: threading.Event | StopRequest | None = None,
    device: str | None = None,
    store: JobStore | None = None,
    storage: Storage | None = None,
    pipeline: Any = None,
    metrics: WorkerMetrics | None = None,
) -> None:
    """Load the pipeline, then claim and run jobs until stopped (`stop_event`: a `StopRequest`,
    or a plain event that stops at once). The store and the storage default to the ones the
    settings' URLs name; `metrics` to a fresh registry, which every heartbeat reports (the
    API's /metrics shows it)."""
    if isinstance(stop_event, StopRequest):
        stop = stop_event
    else:
        stop = StopRequest(settings.drain_timeout_s, event=stop_event)
    own_store, own_storage = store is None, storage is None
    store = store or open_store(settings.job_store_url, retry_s=WORKER_STORE_RETRY_S)
    storage = storage or open_storage(settings.storage_url)
    metrics = metrics or WorkerMetrics()
    heartbeat = Heartbeat(store, worker_id, settings.heartbeat_interval_s, metrics)
    heartbeat.start()

    try:
        if pipeline is None:
            pipeline = _load_or_fail(settings, worker_id, device, heartbeat, stop)
            if pipeline is None:
                return
        preview = fit_preview(pipeline) if settings.previews > 0 else None
        heartbeat.set("ready", detail="")
        ctx = JobContext(
            store=store,
            storage=storage,
            worker_id=worker_id,
            tmp_dir=settings.tmp_dir,
            stopping=stop.release_now,
            on_job=lambda job_id: heartbeat.set(job_id=job_id),
            metrics=metrics,
            previews=settings.previews,
            preview=preview,
            lora_dir=settings.lora_dir,
        )
        delay = 0.0
        while not stop.is_set():
            try:
                job = store.claim(worker_id)
            except Exception as exc:  # Redis restarting, full disk, locked or broken store
                delay = min(MAX_STORE_BACKOFF_S, max(settings.poll_interval_s, delay * 2))
                log.warning(
                    "worker %s: claim failed (%s); retrying in %.1fs", worker_id, exc, delay
                )
                heartbeat.set(detail=f"job store fault: {type(exc).__name__}: {exc}")
                stop.wait(delay)
                continue
            if delay:
                delay = 0.0
                heartbeat.set(detail="")
            if job is None:
                stop.wait(settings.poll_interval_s)
                continue
            if job.started_at is not None:
                metrics.queue_wait_seconds.observe(max(0.0, job.started_at - job.created_at))
            log.info(
                "worker %s: running %s (%s)",
                worker_id,
                job.id,
                job.app,
                extra={"request_id": job.id, "phase": "claimed"},
            )
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


def _load_or_fail(
    settings: ServerSettings,
    worker_id: str,
    device: str | None,
    heartbeat: Heartbeat,
    stop: StopRequest,
) -> Any:
    """The loaded pipeline; or, if it cannot load, None after staying `failed` (with the
    reason, for `/health`) until stopped: a model that does not load is not retried in a loop."""
    log.info("worker %s: loading %s", worker_id, settings.model_name)
    t0 = time.perf_counter()
    if stop.is_set():
        return None
    try:
        stop.loading = True
        pipeline = load_pipeline(settings, device)
    except Exception as exc:
        stop.loading = False
        reason = f"cannot load {settings.model_name}: {type(exc).__name__}: {exc}"
        log.error("worker %s: %s", worker_id, reason)
        heartbeat.set("failed", detail=reason)
        while not stop.wait(1.0):
            pass
        return None
    finally:
        stop.loading = False
    log.info("worker %s: ready in %.1fs", worker_id, time.perf_counter() - t0)
    return pipeline


def run_worker_until_signalled(
    settings: ServerSettings,
    worker_id: str,
    device: str | None = None,
    *,
    metrics: WorkerMetrics | None = None,
) -> None:
    """`run_worker` in a process of its own (a spawned worker, `ovi worker`): SIGTERM/SIGINT
    drain it, and a watchdog bounds the stop and follows the parent's death."""
    stop = StopRequest(settings.drain_timeout_s)
    install_stop_signals(stop)
    Watchdog(stop, settings.shutdown_grace_s).start()
    try:
        run_worker(settings, worker_id, stop_event=stop, device=device, metrics=metrics)
    except KeyboardInterrupt:  # stopped while the model loaded
        log.info("worker %s: stopped while loading", worker_id)


def worker_process_main(settings: ServerSettings, worker_id: str, slot: int) -> None:
    """Entry point of a spawned worker process."""
    configure_logging(settings.log_level, settings.log_format, process=f"worker[{slot}]")
    device = settings.device
    if settings.runtime.gpu_list():  # `ovi worker --gpus 0,1`: this slot's GPU
        device = f"cuda:{settings.runtime.gpu_groups()[slot][0]}"
    elif (
        settings.workers > 1 and (device or "cuda").startswith("cuda") and ":" not in (device or "")
    ):
        device = f"cuda:{slot}"  # one worker per GPU
    run_worker_until_signalled(settings, worker_id, device)
