"""The queue API (queue.fal.run): submit, status (+ SSE stream), result, cancel.

Served under `/queue` and, for requests whose Host starts with `queue.`, at the root too. Both
`fal-ai/ovi/requests/{id}` (what fal's clients call, even for image-to-video) and
`fal-ai/ovi/image-to-video/requests/{id}` answer. Routes only read and write the job store; the
workers do the rest.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from server.deps import (
    AuthDep,
    QueueBaseUrlDep,
    SettingsDep,
    StorageDep,
    StoreDep,
    SubmitOptions,
    SubmitOptionsDep,
    base_url,
    get_app_settings,
    parse_flag,
    queue_base_url,
    require_api_key,
)
from server.errors import (
    InputValidationError,
    JobFailedError,
    RequestInProgressError,
    RequestNotFoundError,
)
from server.fetch import load_image_input
from server.jobs.base import Job, JobError, JobStatus, JobStore, NewJob
from server.schemas import (
    APPS,
    I2V_APP,
    QUEUE_APP,
    T2V_APP,
    CancelResponse,
    OviImageToVideoInput,
    OviInput,
    OviOutput,
    QueueStatus,
    RequestError,
    ValidationErrorBody,
    queue_openapi,
)
from server.settings import ServerSettings
from server.storage import LocalStorage

REQUEST_ID_HEADER = "x-fal-request-id"
_LOGS_QUERY = Query(description="`1`/`true`: include logs; `0`/`false` (default): don't.")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": RequestError, "description": "Missing or invalid API key."},
    404: {"model": RequestError, "description": "Unknown request id."},
}


# --- shared with the sync route ---


async def submit_job(
    app_id: str,
    body: BaseModel,
    options: SubmitOptions,
    *,
    request: Request,
    settings: ServerSettings,
    store: JobStore,
    storage: LocalStorage,
    user_id: str,
) -> Job:
    """Validate what the schema cannot (the image, the webhook URL) and enqueue the job.

    The image is loaded now, so a bad or unreachable `image_url` is a 422 at once and nothing
    enters the queue; its bytes travel with the job for the worker.
    """
    attachments: dict[str, bytes] = {}
    if isinstance(body, OviImageToVideoInput):
        attachments["image"] = await load_image_input(body.image_url, settings, storage=storage)
    if options.webhook_url:
        _check_webhook(options.webhook_url, settings)
    new = NewJob(
        app=app_id,
        input=body.model_dump(mode="json"),
        base_url=base_url(request, settings),
        priority=options.priority,
        start_timeout_s=options.start_timeout_s,
        webhook_url=options.webhook_url,
        attachments=attachments,
        user_id=user_id,
    )
    return await to_thread.run_sync(
        lambda: store.submit(new, max_queue_size=settings.max_queue_size)
    )


def _check_webhook(url: str, settings: ServerSettings) -> None:
    from server.fetch import UrlPolicy
    from server.webhooks import check_webhook_url

    try:
        check_webhook_url(url, UrlPolicy.from_settings(settings))
    except ValueError as e:
        raise InputValidationError("fal_webhook", str(e), location="query") from None


def absolute_result(result: dict[str, Any], base: str) -> dict[str, Any]:
    """The stored output with its file URLs made absolute against `base`."""
    out = dict(result)
    video = out.get("video")
    if isinstance(video, dict) and str(video.get("url", "")).startswith("/"):
        out["video"] = {**video, "url": base + video["url"]}
    return out


# Codes one of fal's clients retries (JS: 429/502/503/504, Python: 408/409/429): a final
# answer must not use them, or `fal.subscribe` waits through backoff and `fal.run` re-submits.
_RETRIED_CODES = frozenset({408, 409, 429, 502, 503, 504})


def replay_status(error: JobError) -> tuple[int, dict[str, str]]:
    """The status code and extra headers a finished job's error is answered with."""
    if error.error_type == "request_timeout":  # start deadline: 504, marked as the user's
        return 504, {"X-Fal-Request-Timeout-Type": "user"}
    code = error.status_code
    if code in _RETRIED_CODES or not 400 <= code <= 599:  # e.g. a 503 stored by older versions
        code = 500
    return code, {}


def raise_for_failed(job: Job) -> None:
    """Replay a failed/cancelled job's stored error as a non-2xx answer."""
    if job.error is None:
        return
    status_code, headers = replay_status(job.error)
    raise JobFailedError(
        status_code=status_code,
        error_type=job.error.error_type,
        detail=job.error.body_detail,
        request_id=job.id,
        headers=headers,
    )


def request_urls(queue_base: str, request_id: str) -> dict[str, str]:
    response_url = f"{queue_base}/{QUEUE_APP}/requests/{request_id}"
    return {
        "response_url": response_url,
        "status_url": response_url + "/status",
        "cancel_url": response_url + "/cancel",
    }


def status_snapshot(
    store: JobStore, request_id: str, queue_base: str, *, with_logs: bool
) -> tuple[Job, dict[str, Any]]:
    """One consistent status body (the job re-read if it left the queue between two reads)."""
    for _ in range(3):
        job = store.get(request_id)
        position = store.queue_position(request_id) if job.status is JobStatus.IN_QUEUE else None
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


async def get_job(store: JobStore, request_id: str) -> Job:
    return await to_thread.run_sync(store.get, request_id)


# --- routes ---

router = APIRouter(
    prefix="/queue",
    tags=["queue"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)

_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorBody, "description": "Invalid input or unusable image_url."},
    429: {"model": RequestError, "description": "The queue is full; retry later."},
}


def _submitted(job: Job, queue_base: str, position: int | None) -> JSONResponse:
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
    return JSONResponse(body, headers={REQUEST_ID_HEADER: job.id})


async def _submit(
    app_id: str,
    body: BaseModel,
    options: SubmitOptions,
    request: Request,
    settings: ServerSettings,
    store: JobStore,
    storage: LocalStorage,
    user_id: str,
    queue_base: str,
) -> JSONResponse:
    job = await submit_job(
        app_id,
        body,
        options,
        request=request,
        settings=settings,
        store=store,
        storage=storage,
        user_id=user_id,
    )
    position = await to_thread.run_sync(store.queue_position, job.id)
    return _submitted(job, queue_base, position)


@router.post(
    f"/{T2V_APP}",
    response_model=QueueStatus,
    responses=_SUBMIT_RESPONSES,
    summary="Submit a text-to-video request",
)
async def submit_text_to_video(
    body: OviInput,
    request: Request,
    options: SubmitOptionsDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    user_id: AuthDep,
    queue_base: QueueBaseUrlDep,
) -> JSONResponse:
    """Queue a `fal-ai/ovi` request; poll `status_url`, then GET `response_url`."""
    return await _submit(
        T2V_APP, body, options, request, settings, store, storage, user_id, queue_base
    )


@router.post(
    f"/{I2V_APP}",
    response_model=QueueStatus,
    responses=_SUBMIT_RESPONSES,
    summary="Submit an image-to-video request",
)
async def submit_image_to_video(
    body: OviImageToVideoInput,
    request: Request,
    options: SubmitOptionsDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    user_id: AuthDep,
    queue_base: QueueBaseUrlDep,
) -> JSONResponse:
    """Queue a `fal-ai/ovi/image-to-video` request. The image is fetched now: a bad
    `image_url` is a 422 and nothing is queued."""
    return await _submit(
        I2V_APP, body, options, request, settings, store, storage, user_id, queue_base
    )


async def request_status(
    request_id: str,
    store: StoreDep,
    queue_base: QueueBaseUrlDep,
    logs: Annotated[str | None, _LOGS_QUERY] = None,
) -> JSONResponse:
    """202 while IN_QUEUE (with `queue_position`) or IN_PROGRESS, 200 once COMPLETED
    (with `metrics`, and `error`/`error_type` if it failed or was cancelled)."""
    job, body = await to_thread.run_sync(
        lambda: status_snapshot(store, request_id, queue_base, with_logs=parse_flag(logs))
    )
    return JSONResponse(
        body, status_code=200 if job.done else 202, headers={REQUEST_ID_HEADER: job.id}
    )


async def request_status_stream(
    request_id: str,
    request: Request,
    store: StoreDep,
    queue_base: QueueBaseUrlDep,
    logs: Annotated[str | None, _LOGS_QUERY] = None,
) -> StreamingResponse:
    """Server-sent events: one status object per `data:` line whenever it changes, a `: ping`
    comment when quiet, closed after COMPLETED (the JS client resolves with the last event).

    With `logs=1` each event carries only the log lines new since the previous event: the JS
    client concatenates `logs` across events (polling answers carry the full list instead)."""
    settings: ServerSettings = get_app_settings(request)
    with_logs = parse_flag(logs)
    job = await get_job(store, request_id)  # 404 before the stream starts

    def snapshot(sent_logs: int) -> tuple[Job, dict[str, Any], list[dict[str, str]]]:
        current, body = status_snapshot(store, request_id, queue_base, with_logs=False)
        entries = store.logs(request_id, since=sent_logs) if with_logs else []
        new_logs = [e.to_dict() for e in entries]
        return current, body, new_logs  # logs read after the status: none missed at the end

    async def events() -> AsyncIterator[str]:
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
            if await request.is_disconnected():
                return
            await asyncio.sleep(settings.poll_interval_s)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            REQUEST_ID_HEADER: job.id,
        },
    )


async def request_result(
    request_id: str, request: Request, store: StoreDep, settings: SettingsDep
) -> JSONResponse:
    """The output once COMPLETED; 400 before; a failed request answers its error (non-2xx)."""
    job = await get_job(store, request_id)
    if not job.done:
        raise RequestInProgressError(request_id=job.id)
    raise_for_failed(job)
    assert job.result is not None
    return JSONResponse(
        absolute_result(job.result, base_url(request, settings)),
        headers={REQUEST_ID_HEADER: job.id},
    )


async def cancel_request(request_id: str, store: StoreDep) -> JSONResponse:
    """202 while queued or running (a running job stops between denoising steps); 400
    `{"status": "ALREADY_COMPLETED"}` after."""
    job = await to_thread.run_sync(store.cancel, request_id)
    return JSONResponse(
        {"status": "CANCELLATION_REQUESTED"}, status_code=202, headers={REQUEST_ID_HEADER: job.id}
    )


for _app in (QUEUE_APP, *[a for a in APPS if a != QUEUE_APP]):
    _by_id = f"/{_app}/requests/{{request_id}}"
    _tag = "" if _app == QUEUE_APP else " (image-to-video path)"
    router.add_api_route(
        f"{_by_id}/status",
        request_status,
        methods=["GET"],
        response_model=QueueStatus,
        responses={202: {"model": QueueStatus, "description": "Queued or in progress."}},
        summary="Request status" + _tag,
    )
    router.add_api_route(
        f"{_by_id}/status/stream",
        request_status_stream,
        methods=["GET"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
        summary="Request status as server-sent events" + _tag,
    )
    router.add_api_route(
        _by_id,
        request_result,
        methods=["GET"],
        response_model=OviOutput,
        responses={
            400: {"model": RequestError, "description": "Request is still in progress."},
            422: {"model": ValidationErrorBody, "description": "The request failed on input."},
            499: {"model": RequestError, "description": "The request was cancelled."},
            500: {"model": RequestError, "description": "The request failed."},
            504: {"model": RequestError, "description": "Not started before its timeout."},
        },
        summary="Request result" + _tag,
    )
    router.add_api_route(
        f"{_by_id}/cancel",
        cancel_request,
        methods=["PUT"],
        status_code=202,
        response_model=CancelResponse,
        responses={400: {"model": CancelResponse, "description": "Already completed."}},
        summary="Cancel a request" + _tag,
    )


# --- fal's per-endpoint queue OpenAPI ---

openapi_router = APIRouter(tags=["openapi"])


@openapi_router.get("/api/openapi/queue/openapi.json", include_in_schema=False)
@openapi_router.get("/openapi/queue/openapi.json", summary="Per-endpoint queue OpenAPI")
async def endpoint_openapi(
    request: Request,
    settings: SettingsDep,
    endpoint_id: Annotated[str, Query(description="fal-ai/ovi or fal-ai/ovi/image-to-video")],
) -> JSONResponse:
    """The OpenAPI 3.0.4 document fal publishes for one endpoint's queue."""
    if endpoint_id not in APPS:
        raise RequestNotFoundError(f"Unknown endpoint {endpoint_id!r}; one of {', '.join(APPS)}")
    return JSONResponse(queue_openapi(endpoint_id, queue_base_url(request, settings)))
