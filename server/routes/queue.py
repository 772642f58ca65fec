"""The queue API (queue.fal.run): submit, status (+ SSE stream), result, cancel.

Served under `/queue` and, for requests whose Host starts with `queue.`, at the root too. Both
`fal-ai/ovi/requests/{id}` (what fal's clients call, even for image-to-video) and
`fal-ai/ovi/image-to-video/requests/{id}` answer. One submit route per input model of
`server.schemas.INPUT_MODELS`; the logic is `server.serving.Serving`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from server.deps import (
    BaseUrlDep,
    CallerDep,
    QueueBaseUrlDep,
    ServingDep,
    SettingsDep,
    SubmissionDep,
    parse_flag,
    queue_base_url,
    require_api_key,
)
from server.errors import RequestNotFoundError
from server.schemas import (
    APP_TITLES,
    APPS,
    INPUT_MODELS,
    OUTPUT_MODELS,
    QUEUE_APP,
    CancelResponse,
    QueueStatus,
    RequestError,
    ValidationErrorBody,
    queue_openapi,
)

REQUEST_ID_HEADER = "x-fal-request-id"
_LOGS_QUERY = Query(description="`1`/`true`: include logs; `0`/`false` (default): don't.")

STORE_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": RequestError,
        "description": "The job store is restarting (or no worker can run requests, on a"
        " submit); retry after `Retry-After` seconds.",
    },
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": RequestError, "description": "Missing or invalid API key."},
    404: {"model": RequestError, "description": "Unknown request id (or another key's)."},
    **STORE_UNAVAILABLE,
}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": RequestError,
        "description": "Body is not JSON, or a bad X-Fal-Request-Timeout/Priority header.",
    },
    408: {"model": RequestError, "description": "The body stalled (`body_read_timeout_s`)."},
    413: {"model": RequestError, "description": "Body larger than the API's cap."},
    422: {"model": ValidationErrorBody, "description": "Invalid input or unusable image_url."},
    429: {
        "model": RequestError,
        "description": "The queue is full; retry after `Retry-After` seconds.",
    },
    507: {"model": RequestError, "description": "The server's disk is full; retry later."},
}

router = APIRouter(
    prefix="/queue",
    tags=["queue"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)


def answer(body: dict[str, Any], request_id: str, status_code: int = 200) -> JSONResponse:
    """A JSON answer carrying the request id header, as every fal answer about a request does."""
    return JSONResponse(body, status_code=status_code, headers={REQUEST_ID_HEADER: request_id})


def add_app_routes(
    router: APIRouter,
    make_endpoint: Callable[[str], Callable[..., Awaitable[Any]]],
    *,
    summary: str,
    response_models: dict[str, Any],
    **route: Any,
) -> None:
    """One `POST /{app}` per app of `INPUT_MODELS`: `make_endpoint(app_id)` handles it, with the
    app's input model as its `body`; `summary` is formatted with the app's `title`."""
    for app_id, input_model in INPUT_MODELS.items():
        endpoint = make_endpoint(app_id)
        endpoint.__annotations__ = {**endpoint.__annotations__, "body": input_model}
        title = APP_TITLES[app_id]
        router.add_api_route(
            f"/{app_id}",
            endpoint,
            methods=["POST"],
            response_model=response_models[app_id],
            summary=summary.format(title=title).capitalize(),
            name=f"{endpoint.__name__}_{title.replace('-', '_')}",
            **route,
        )


def submit_endpoint(app_id: str) -> Callable[..., Awaitable[Any]]:
    async def submit(
        body: BaseModel, submission: SubmissionDep, serving: ServingDep, queue_base: QueueBaseUrlDep
    ) -> JSONResponse:
        job = await serving.submit(app_id, body, submission)
        return answer(await serving.submitted(job, queue_base), job.id)

    submit.__doc__ = (
        f"Queue a `{app_id}` request; poll `status_url`, then GET `response_url`. Inputs are"
        " checked now (an `image_url` is fetched): a bad one is a 422 and nothing is queued."
    )
    return submit


add_app_routes(
    router,
    submit_endpoint,
    summary="submit a {title} request",
    response_models=dict.fromkeys(APPS, QueueStatus),
    responses=SUBMIT_RESPONSES,
)


async def request_status(
    request_id: str,
    serving: ServingDep,
    queue_base: QueueBaseUrlDep,
    caller: CallerDep,
    logs: Annotated[str | None, _LOGS_QUERY] = None,
) -> JSONResponse:
    """202 while IN_QUEUE (with `queue_position`) or IN_PROGRESS, 200 once COMPLETED
    (with `metrics`, and `error`/`error_type` if it failed or was cancelled)."""
    job, body = await serving.status(
        request_id, queue_base, with_logs=parse_flag(logs), owner=caller.owner
    )
    return answer(body, job.id, 200 if job.done else 202)


async def request_status_stream(
    request_id: str,
    request: Request,
    serving: ServingDep,
    queue_base: QueueBaseUrlDep,
    caller: CallerDep,
    logs: Annotated[str | None, _LOGS_QUERY] = None,
) -> StreamingResponse:
    """Server-sent events: one status object per `data:` line whenever it changes, a `: ping`
    comment when quiet, closed after COMPLETED (the JS client resolves with the last event).

    With `logs=1` each event carries only the log lines new since the previous event: the JS
    client concatenates `logs` across events (polling answers carry the full list instead)."""
    job = await serving.get(request_id, caller.owner)  # 404 before the stream starts
    events = serving.status_events(
        request_id,
        queue_base,
        with_logs=parse_flag(logs),
        disconnected=request.is_disconnected,
        owner=caller.owner,
    )
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", REQUEST_ID_HEADER: job.id},
    )


async def request_result(
    request_id: str, serving: ServingDep, base: BaseUrlDep, caller: CallerDep
) -> JSONResponse:
    """The output once COMPLETED; 400 before; a failed request answers its error (non-2xx)."""
    job, output = await serving.result(request_id, base, caller.owner)
    return answer(output, job.id)


async def cancel_request(request_id: str, serving: ServingDep, caller: CallerDep) -> JSONResponse:
    """202 while queued or running (a running job stops between denoising steps); 400
    `{"status": "ALREADY_COMPLETED"}` after."""
    job = await serving.cancel(request_id, caller.owner)
    return answer({"status": "CANCELLATION_REQUESTED"}, job.id, 202)


for _app in (QUEUE_APP, *[a for a in APPS if a != QUEUE_APP]):
    _by_id = f"/{_app}/requests/{{request_id}}"
    _tag = "" if _app == QUEUE_APP else f" ({APP_TITLES[_app]} path)"
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
        response_model=OUTPUT_MODELS[_app],
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
