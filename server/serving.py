"""The request logic behind fal's API: submit, status snapshot (and its SSE stream), result
replay, cancel, and the sync API's submit-and-wait. Routes only parse, call one method here and
shape the answer; the maintenance loop renders webhooks with the same replay.

`Serving` is made once per app in the lifespan (`server.main`) from the settings, the job store
and the storage, and reached by routes as `ServingDep`. Everything it refuses is raised (a
`FalError`, or a job-store error that `server.errors.fal_error` maps): there is no second error
path of returned error values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from anyio import to_thread
from pydantic import BaseModel

from server.errors import (
    USER_TIMEOUT,
    FalError,
    InputValidationError,
    InsufficientStorageError,
    JobFailedError,
    RequestInProgressError,
    ServiceUnavailableError,
)
from server.fetch import UrlPolicy, load_image_input
from server.jobs import (
    Job,
    JobAlreadyCompletedError,
    JobError,
    JobNotFoundError,
    JobStatus,
    JobStore,
    NewJob,
)
from server.jobs.base import CANCELLED, Priority
from server.jobs.errors import JobStoreError, StoreUnavailableError
from server.lora_inputs import check_lora_inputs
from server.readiness import Faults, Readiness, assess, is_disk_full
from server.schemas import QUEUE_APP, OviImageToVideoInput
from server.settings import ServerSettings
from server.storage import Storage
from server.webhooks import check_webhook_url

if TYPE_CHECKING:
    from server.supervisor import WorkerSupervisor

Disconnected = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class SubmitOptions:
    """What a submit carries besides its body (query and headers fal's clients send)."""

    webhook_url: str | None = None
    start_timeout_s: float | None = None
    priority: Priority = "normal"


@dataclass(frozen=True)
class Submission:
    """Who submits, where their URLs point, and the options: everything a submit route reads
    from the request besides the body."""

    options: SubmitOptions
    user_id: str
    base_url: str


# --- result replay (shared with the webhooks) ---


def absolute_url(url: str, base: str) -> str:
    """A storage URL as clients use it: a path on this API gets `base` in front."""
    return base + url if url.startswith("/") else url


def absolute_result(result: dict[str, Any], base: str) -> dict[str, Any]:
    """The stored output with its file URLs made absolute against `base`."""
    out = dict(result)
    video = out.get("video")
    if isinstance(video, dict) and isinstance(video.get("url"), str):
        out["video"] = {**video, "url": absolute_url(video["url"], base)}
    return out


# Codes one of fal's clients retries (JS: 429/502/503/504, Python: 408/409/429): a final
# answer must not use them, or `fal.subscribe` waits through backoff and `fal.run` re-submits.
_RETRIED_CODES = frozenset({408, 409, 429, 502, 503, 504})


def replay_status(error: JobError) -> tuple[int, dict[str, str]]:
    """The status code and extra headers a finished job's error is answered with."""
    if error.error_type == "request_timeout":  # start deadline: 504, marked as the user's
        return 504, USER_TIMEOUT
    code = error.status_code
    if code in _RETRIED_CODES or not 400 <= code <= 599:  # e.g. a 503 stored by older versions
        code = 500
    return code, {}


def replay(error: JobError, request_id: str) -> JobFailedError:
    """A stored job error as the non-2xx answer it replays to."""
    status_code, headers = replay_status(error)
    return JobFailedError(
        status_code=status_code,
        error_type=error.error_type,
        detail=error.body_detail,
        request_id=request_id,
        headers=headers,
    )


def job_output(job: Job, base: str) -> dict[str, Any]:
    """A completed job's output with absolute URLs; its stored error raised if it failed."""
    if job.error is not None:
        raise replay(job.error, job.id)
    assert job.result is not None
    return absolute_result(job.result, base)


def webhook_message(job: Job) -> tuple[Literal["OK", "ERROR"], dict[str, Any], str | None]:
    """A completed job as fal's webhook fields: status, payload, error."""
    try:
        return "OK", job_output(job, job.base_url), None
    except JobFailedError as e:
        return "ERROR", e.body(), f"Invalid status code: {e.status_code}"


def request_urls(queue_base: str, request_id: str) -> dict[str, str]:
    response_url = f"{queue_base}/{QUEUE_APP}/requests/{request_id}"
    return {
        "response_url": response_url,
        "status_url": response_url + "/status",
        "cancel_url": response_url + "/cancel",
    }


# --- the service ---


class Serving:
    """The fal request logic over one job store and one storage."""

    def __init__(
        self,
        settings: ServerSettings,
        store: JobStore,
        storage: Storage,
        *,
        faults: Faults | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        # Images decoded at once: the decode pool's bound (waiting ones hold only their bytes).
        self.decode_slots = asyncio.Semaphore(settings.image_decode_concurrency)
        self.faults = faults or Faults()
        self.supervisor: WorkerSupervisor | None = None  # set by the lifespan once started
        self._readiness: tuple[float, Readiness] | None = None

    def readiness(self) -> Readiness:
        """`server.readiness.assess` for this server. Blocking: call it from a thread."""
        return assess(self.settings, self.store, supervisor=self.supervisor, faults=self.faults)

    async def admit(self) -> None:
        """Refuse a submit that cannot be served: 507 on a full disk, 503 while nothing can run
        jobs (the state is re-read at most once a second)."""
        now = time.monotonic()
        if self._readiness is None or now - self._readiness[0] > 1.0:
            self._readiness = (now, await self._call(self.readiness))
        readiness = self._readiness[1]
        if readiness.disk_full:
            raise InsufficientStorageError(readiness.reasons[0] if readiness.reasons else None)
        if readiness.store_unavailable:  # a restart of the store: retry soon
            raise StoreUnavailableError(message="; ".join(readiness.reasons))
        if not readiness.can_run_jobs:
            raise ServiceUnavailableError(
                "No worker can run requests now: " + "; ".join(readiness.reasons)
            )

    def refusal(self, exc: Exception, duty: str) -> Exception:
        """What a store or storage failure during a submit is answered with: 507 for a full
        disk, 503 for a failing store (the fault is noted for `/health`); others as they are."""
        if isinstance(exc, (FalError, JobStoreError)):
            return exc
        if is_disk_full(exc):
            self.faults.report(duty, exc)
            self._readiness = None
            return InsufficientStorageError(f"The server's disk is full ({exc}); retry later")
        if isinstance(exc, (OSError, sqlite3.Error)):
            self.faults.report(duty, exc)
            return ServiceUnavailableError(f"The job store failed ({type(exc).__name__}: {exc})")
        return exc

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store or storage call, off the event loop."""
        return await to_thread.run_sync(fn, *args)

    def _visible(self, request_id: str, owner: str | None, *, with_input: bool = False) -> Job:
        """The job if `owner` (None: anyone, for admins) submitted it; else `JobNotFoundError`,
        exactly as for an unknown id, so another tenant learns nothing. Blocking."""
        job = self.store.get(request_id, with_input=with_input)
        if owner is not None and job.user_id != owner:
            raise JobNotFoundError(request_id)
        return job

    async def get(
        self, request_id: str, owner: str | None = None, *, with_input: bool = False
    ) -> Job:
        """The job (its input only if asked) as `owner` may see it."""
        return await self._call(lambda: self._visible(request_id, owner, with_input=with_input))

    # --- submit ---

    async def submit(self, app_id: str, body: BaseModel, submission: Submission) -> Job:
        """Validate what the schema cannot (the image, the webhook URL) and enqueue the job.

        The image is loaded now, so a bad or unreachable `image_url` is a 422 at once and nothing
        enters the queue; it is saved to the storage and the job keeps its key.
        """
        settings, options = self.settings, submission.options
        if options.webhook_url:
            await self._check_webhook(options.webhook_url)
        await self.admit()
        loras = [entry.model_dump() for entry in getattr(body, "lora", [])]
        if loras:  # the `lora` extra field: a 422 now, not a failed job later
            owner = submission.user_id if settings.files_require_key else None
            try:
                detail = await self._call(
                    lambda: check_lora_inputs(loras, settings.lora_dir, self.storage, owner)
                )
            except Exception as exc:  # the storage itself failed (a missing file is a 422)
                raise self.refusal(exc, "storage") from exc
            if detail:
                raise InputValidationError(detail)
        image = None
        if isinstance(body, OviImageToVideoInput):
            image = await load_image_input(
                body.image_url,
                settings,
                storage=self.storage,
                slots=self.decode_slots,
                owner=submission.user_id if settings.files_require_key else None,
            )
        input_files: dict[str, str] = {}
        if image is not None:
            try:
                saved = await self._call(
                    lambda: self.storage.save(
                        image,
                        kind="inputs",
                        content_type="application/octet-stream",
                        file_name="image",
                    )
                )
            except Exception as exc:
                raise self.refusal(exc, "storage") from exc
            input_files["image"] = saved.key
        new = NewJob(
            app=app_id,
            input=body.model_dump(mode="json"),
            base_url=submission.base_url,
            priority=options.priority,
            start_timeout_s=options.start_timeout_s,
            webhook_url=options.webhook_url,
            input_files=input_files,
            user_id=submission.user_id,
        )
        try:
            job = await self._call(
                lambda: self.store.submit(new, max_queue_size=settings.max_queue_size)
            )
        except Exception as exc:  # refused (e.g. the queue is full): leave nothing behind
            for key in input_files.values():
                with contextlib.suppress(Exception):
                    await self._call(self.storage.delete, key)
            raise self.refusal(exc, "job store") from exc
        self.faults.clear("job store")
        return job

    async def _check_webhook(self, url: str) -> None:
        """Refuse a `fal_webhook` that can never be delivered: its host is resolved now (within
        `fetch_connect_timeout_s`), so `localhost`, `2130706433` or a name pointing inside are
        a 422 at submit, not two hours of refused deliveries."""
        policy = UrlPolicy.from_settings(self.settings)
        timeout = self.settings.fetch_connect_timeout_s
        loop = asyncio.get_running_loop()
        check = loop.run_in_executor(None, lambda: check_webhook_url(url, policy, resolve=True))
        try:
            await asyncio.wait_for(check, timeout)
        except ValueError as e:
            reason = str(e)
        except asyncio.TimeoutError:
            reason = f"invalid webhook URL: its host did not resolve within {timeout:g} s"
        else:
            return
        raise InputValidationError.for_field("fal_webhook", reason, location="query")

    async def submitted(self, job: Job, queue_base: str) -> dict[str, Any]:
        """The queue's answer to a submit."""
        position = await self._call(self.store.queue_position, job.id)
        body: dict[str, Any] = {
            "status": "IN_QUEUE",
            "request_id": job.id,
            **request_urls(queue_base, job.id),
            "logs": None,
            "metrics": {},
            "queue_position": position if position is not None else 0,
        }
        if job.gateway_request_id:
            body["gateway_request_id"] = job.gateway_request_id
        return body

    # --- status ---

    def status_snapshot(
        self, request_id: str, queue_base: str, *, with_logs: bool, owner: str | None = None
    ) -> tuple[Job, dict[str, Any]]:
        """One consistent status body (the job re-read if it left the queue between two reads);
        the stored input is not read. Blocking: call it from a thread."""
        store = self.store
        for _ in range(3):
            job = self._visible(request_id, owner)
            position = (
                store.queue_position(request_id) if job.status is JobStatus.IN_QUEUE else None
            )
            if job.status is not JobStatus.IN_QUEUE or position is not None:
                break
        body: dict[str, Any] = {
            "status": job.status.value,
            "request_id": job.id,
            **request_urls(queue_base, job.id),
            "logs": [e.to_dict() for e in store.logs(job.id)] if with_logs else None,
            "metrics": job.metrics if job.done else {},
        }
        if job.status is JobStatus.IN_QUEUE:
            body["queue_position"] = position if position is not None else 0
        if job.done and job.error is not None:
            body["error"] = job.error.message
            body["error_type"] = job.error.error_type
        return job, body

    async def status(
        self, request_id: str, queue_base: str, *, with_logs: bool, owner: str | None = None
    ) -> tuple[Job, dict[str, Any]]:
        return await to_thread.run_sync(
            lambda: self.status_snapshot(request_id, queue_base, with_logs=with_logs, owner=owner)
        )

    async def status_events(
        self,
        request_id: str,
        queue_base: str,
        *,
        with_logs: bool,
        disconnected: Disconnected,
        owner: str | None = None,
    ) -> AsyncIterator[str]:
        """Server-sent events: one status object per `data:` line whenever it changes, a `: ping`
        comment when quiet, until COMPLETED or the client leaves (checked every poll interval).

        With logs each event carries only the log lines new since the previous event: the JS
        client concatenates `logs` across events (polling answers carry the full list)."""
        settings = self.settings

        def snapshot(sent_logs: int) -> tuple[Job, dict[str, Any], list[dict[str, str]]]:
            current, body = self.status_snapshot(
                request_id, queue_base, with_logs=False, owner=owner
            )
            entries = self.store.logs(request_id, since=sent_logs) if with_logs else []
            return current, body, [e.to_dict() for e in entries]  # logs after status: none lost

        last_body = None
        sent_logs = 0
        last_write = time.monotonic()
        while True:
            current, body, new_logs = await to_thread.run_sync(snapshot, sent_logs)
            text = json.dumps(body)
            if text != last_body or (with_logs and new_logs):
                if with_logs:
                    body["logs"] = new_logs
                    sent_logs += len(new_logs)
                yield f"data: {json.dumps(body)}\n\n"
                last_body, last_write = text, time.monotonic()
            if current.done:
                return
            if time.monotonic() - last_write >= settings.sse_ping_interval_s:
                yield ": ping\n\n"
                last_write = time.monotonic()
            if await disconnected():
                return
            await asyncio.sleep(settings.poll_interval_s)

    # --- result and cancel ---

    async def result(
        self, request_id: str, base: str, owner: str | None = None
    ) -> tuple[Job, dict[str, Any]]:
        """The output once COMPLETED; 400 before; a failed request raises its stored error."""
        job = await self.get(request_id, owner)
        if not job.done:
            raise RequestInProgressError(request_id=job.id)
        return job, job_output(job, base)

    async def cancel(self, request_id: str, owner: str | None = None) -> Job:
        """A queued job completes as cancelled; a running one stops between denoising steps."""

        def cancel() -> Job:
            self._visible(request_id, owner)
            return self.store.cancel(request_id)

        return await self._call(cancel)

    # --- sync API ---

    async def run(
        self, app_id: str, body: BaseModel, submission: Submission, disconnected: Disconnected
    ) -> tuple[Job, dict[str, Any]]:
        """Submit, wait for completion, and answer like `result`. The wait ends when the job
        completes or the client leaves (checked every poll interval): then the job is cancelled
        and the answer, which nobody reads, is the cancellation."""
        job = await self.submit(app_id, body, submission)
        while not job.done:
            await asyncio.sleep(self.settings.poll_interval_s)
            if await disconnected():
                try:
                    await self.cancel(job.id)
                except JobAlreadyCompletedError:
                    pass
                raise replay(CANCELLED, job.id)
            job = await self.get(job.id)
        return job, job_output(job, submission.base_url)
