"""Every refusal the API answers, and the one place exceptions become HTTP answers.

Server conditions are `FalError` subclasses, each declaring its status, `error_type` and default
`detail` in its class line. `fal_error(exc)` turns anything a route, a dependency or a middleware
raises into one: a `FalError` as is, a job-store refusal (`server.jobs.errors`) by the
`STORE_ERRORS` table, an unusable `image_url` or a body that fails validation as fal's 422,
Starlette's own refusals as Starlette answers them, anything else as a 500. `error_response`
writes it, and `server.main` registers it as the one exception handler: fal's request-error shape
`{"detail": "...", "error_type": "..."}` plus the `X-Fal-Error-Type` header; the few answers with
another body (cancel after completion: `{"status": "ALREADY_COMPLETED"}`, 422s: `{"detail":
[...]}`) override `body()`. Error types follow fal's request-error reference.

A job that fails inside the worker is not an exception here: it is stored as a `JobError` (see
`server.jobs.base`) and replayed by `JobFailedError` when the client asks for the result.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.fetch import ImageInputError
from server.jobs.errors import (
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobStoreError,
    QueueFullError,
    StoreUnavailableError,
)


class FalError(Exception):
    """Base class: an HTTP answer with fal's `{detail, error_type}` body.

    Subclasses declare themselves in one line:
    `class GoneError(FalError, status=410, error_type="gone", detail="It is gone"): ...`
    """

    status_code: int = 500
    error_type: str = "internal_error"
    default_detail: Any = "Internal server error"
    fixed_headers: dict[str, str] = {}  # sent with every answer of the class

    def __init_subclass__(
        cls,
        *,
        status: int | None = None,
        error_type: str | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init_subclass__()
        if status is not None:
            cls.status_code = status
        if error_type is not None:
            cls.error_type = error_type
        if detail is not None:
            cls.default_detail = detail
        if headers is not None:
            cls.fixed_headers = headers

    def __init__(
        self,
        detail: Any = None,
        *,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = self.default_detail if detail is None else detail
        self.request_id = request_id
        self.extra_headers = dict(headers or {})
        super().__init__(self.detail if isinstance(self.detail, str) else self.error_type)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "error_type": self.error_type}

    def headers(self) -> dict[str, str]:
        headers = {"X-Fal-Error-Type": self.error_type, **self.fixed_headers, **self.extra_headers}
        if self.request_id:
            headers["x-fal-request-id"] = self.request_id
        return headers


class UnauthorizedError(
    FalError, status=401, error_type="unauthorized", headers={"WWW-Authenticate": "Key"}
):
    """No `Authorization: Key <key>` with a configured key."""

    default_detail = "Missing or invalid API key: send `Authorization: Key <key>`"


USER_TIMEOUT = {"X-Fal-Request-Timeout-Type": "user"}  # fal's clients retry no such 504


class RequestNotFoundError(
    FalError, status=404, error_type="request_not_found", detail="Request not found"
):
    """An unknown request id (or one swept after its retention time)."""


class RequestInProgressError(
    FalError, status=400, error_type="request_in_progress", detail="Request is still in progress"
):
    """The result was asked for before the request completed."""


class AlreadyCompletedError(
    FalError, status=400, error_type="already_completed", detail="Request is already completed"
):
    """Cancel after completion: fal answers 400 `{"status": "ALREADY_COMPLETED"}`."""

    def body(self) -> dict[str, Any]:
        return {"status": "ALREADY_COMPLETED", "detail": self.detail}


class BackPressureError(
    FalError, status=429, error_type="queue_full", detail="The queue is full; retry later"
):
    """The queue is full: both fal clients retry 429 with backoff."""


class InsufficientStorageError(
    FalError,
    status=507,
    error_type="insufficient_storage",
    detail="The server's disk is full; retry later",
    headers={"Retry-After": "60"},
):
    """The data directory (or the job store's file) has no room: nothing was queued."""


class ServiceUnavailableError(
    FalError,
    status=503,
    error_type="service_unavailable",
    detail="The service is unavailable; retry shortly",
):
    """Nothing can take the request now: the job store cannot be reached (a Redis restart) or
    fails, or no worker can run requests (see `/health` for why). Nothing was queued; both fal
    clients retry 503. `Retry-After` is the `retry_after_s` setting unless set here."""


class StoreUnavailableHTTPError(
    ServiceUnavailableError,
    detail="The job store is unavailable; retry shortly",
    headers={"Retry-After": "1"},
):
    """The job store cannot be reached (e.g. its Redis restarts): retry soon."""


class BadRequestError(FalError, status=400, error_type="bad_request", detail="Bad request"):
    """A malformed request that is not a body validation error (e.g. a bad timeout header)."""


class StartTimeoutError(FalError, status=504, error_type="request_timeout", headers=USER_TIMEOUT):
    """`X-Fal-Request-Timeout` passed before a worker started the request."""

    default_detail = "Request timed out before it started"


class RequestTooLargeError(FalError, status=413, error_type="request_too_large"):
    """A JSON body over the API's cap (see `server.middleware.BodyLimitMiddleware`)."""


class UploadTooLargeError(
    FalError, status=413, error_type="file_too_large", detail="Upload too large"
):
    """An upload over `upload_max_bytes`, or one of fal's multipart uploads."""


class InvalidUploadTokenError(
    FalError,
    status=403,
    error_type="invalid_upload_token",
    detail="Upload URL is invalid or has expired",
):
    """A pre-signed upload URL or CDN token that does not verify."""


class FileNotFoundHTTPError(FalError, status=404, error_type="file_not_found"):
    """No stored file at this URL (or it expired): `{"detail": "File not found"}`."""

    default_detail = "File not found"

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class RangeNotSatisfiableError(FalError, status=416, error_type="range_not_satisfiable"):
    """A `Range` that starts past the end of the file."""

    default_detail = "Requested range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(headers={"Content-Range": f"bytes */{size}"})


# error_type of Starlette's and FastAPI's own refusals, by status.
PLAIN_ERROR_TYPES = {
    400: "bad_request",  # e.g. a body that is not JSON (invalid UTF-8, nesting too deep)
    404: "not_found",
    405: "method_not_allowed",
    408: "request_body_timeout",
    413: "request_too_large",
}


class PlainHTTPError(FalError):
    """Starlette's own refusals (404 for an unknown path, 405, a body that is not JSON, ...):
    their `detail` and headers, plus an `error_type` like every other error answer."""

    def __init__(self, status_code: int, detail: Any, headers: dict[str, str] | None) -> None:
        self.status_code = status_code
        self.error_type = PLAIN_ERROR_TYPES.get(status_code, "http_error")
        super().__init__(detail, headers=headers)


class JobFailedError(FalError):
    """Replays a failed or cancelled job's stored error (status, error_type, detail)."""

    def __init__(
        self,
        *,
        status_code: int,
        error_type: str,
        detail: Any,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_type = error_type
        super().__init__(detail, request_id=request_id, headers=headers)


def validation_detail(loc: list[str | int], msg: str, type_: str, **extra: Any) -> list[dict]:
    """fal's model-error body: a one-item `detail` list like pydantic's 422 entries."""
    return [{"loc": loc, "msg": msg, "type": type_, **extra}]


class InputValidationError(FalError, status=422, error_type="validation_error"):
    """A 422 `{"detail": [{loc, msg, type}, ...]}`: a body the schema refused, or an input it
    accepted that is still unusable (e.g. its image). `X-Fal-Error-Type` is set only for the
    latter (pass `header=True`), as before."""

    def __init__(self, detail: list[dict[str, Any]], *, header: bool = True) -> None:
        if detail and header:
            self.error_type = str(detail[0].get("type", self.error_type))
        self.header = header
        super().__init__(detail)

    @classmethod
    def for_field(
        cls,
        field: str,
        msg: str,
        type_: str = "value_error",
        *,
        location: str = "body",
        input_value: Any = None,
    ) -> InputValidationError:
        extra = {} if input_value is None else {"input": input_value}
        return cls(validation_detail([location, field], msg, type_, **extra))

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}

    def headers(self) -> dict[str, str]:
        return super().headers() if self.header else dict(self.extra_headers)


# --- the one mapping to HTTP ---------------------------------------------------------------------

STORE_ERRORS: dict[type[JobStoreError], type[FalError]] = {
    JobNotFoundError: RequestNotFoundError,
    JobAlreadyCompletedError: AlreadyCompletedError,
    QueueFullError: BackPressureError,
    StoreUnavailableError: StoreUnavailableHTTPError,
}


def fal_error(exc: Exception) -> FalError:
    """The HTTP answer for anything raised while serving a request (500 for the unexpected)."""
    if isinstance(exc, FalError):
        return exc
    if isinstance(exc, JobStoreError):
        for store_error, http_error in STORE_ERRORS.items():
            if isinstance(exc, store_error):
                echo = not isinstance(exc, JobNotFoundError)  # a 404 names no request
                return http_error(request_id=exc.request_id if echo else None)
    if isinstance(exc, ImageInputError):
        return InputValidationError([exc.to_detail()])
    if isinstance(exc, RequestValidationError):
        return InputValidationError([_validation_item(e) for e in exc.errors()], header=False)
    if isinstance(exc, HTTPException):  # Starlette's own: unknown routes, methods, body limits
        return PlainHTTPError(exc.status_code, exc.detail, exc.headers)
    return FalError()


def error_response(exc: Exception) -> JSONResponse:
    """`fal_error(exc)` as the JSON answer: the one way a refusal reaches a client."""
    error = fal_error(exc)
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


def _validation_item(error: dict[str, Any]) -> dict[str, Any]:
    item = {
        "loc": list(error.get("loc", ())),
        "msg": error.get("msg", ""),
        "type": error.get("type", ""),
    }
    if "ctx" in error:
        ctx = error["ctx"].items()
        item["ctx"] = {k: str(v) if isinstance(v, Exception) else v for k, v in ctx}
    return item
