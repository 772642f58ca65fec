"""Server conditions as exceptions, each carrying its HTTP status, `error_type` and body.

One exception handler (`server.main`) turns every `FalError` into fal's request-error shape:
`{"detail": "...", "error_type": "..."}` plus the `X-Fal-Error-Type` header. The few fal answers
with another body (cancel after completion: `{"status": "ALREADY_COMPLETED"}`) override `body()`.
Error types follow fal's request-error reference (`request_timeout`, `runner_disconnected`, ...).

A job that fails inside the worker is not an exception here: it is stored as a `JobError` (see
`server.jobs.base`) and replayed by `JobFailedError` when the client asks for the result.
"""

from __future__ import annotations

from typing import Any


class FalError(Exception):
    """Base class: an HTTP answer with fal's `{detail, error_type}` body."""

    status_code: int = 500
    error_type: str = "internal_error"
    default_detail: str = "Internal server error"

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
        super().__init__(detail if isinstance(detail, str) else self.default_detail)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "error_type": self.error_type}

    def headers(self) -> dict[str, str]:
        headers = {"X-Fal-Error-Type": self.error_type, **self.extra_headers}
        if self.request_id:
            headers["x-fal-request-id"] = self.request_id
        return headers


class UnauthorizedError(FalError):
    status_code = 401
    error_type = "unauthorized"
    default_detail = "Missing or invalid API key: send `Authorization: Key <key>`"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": "Key"}


class RequestNotFoundError(FalError):
    status_code = 404
    error_type = "request_not_found"
    default_detail = "Request not found"


class RequestInProgressError(FalError):
    """The result was asked for before the request completed."""

    status_code = 400
    error_type = "request_in_progress"
    default_detail = "Request is still in progress"


class AlreadyCompletedError(FalError):
    """Cancel after completion: fal answers 400 `{"status": "ALREADY_COMPLETED"}`."""

    status_code = 400
    error_type = "already_completed"
    default_detail = "Request is already completed"

    def body(self) -> dict[str, Any]:
        return {"status": "ALREADY_COMPLETED", "detail": self.detail}


class QueueFullError(FalError):
    """Back-pressure: both fal clients retry 429 with backoff."""

    status_code = 429
    error_type = "queue_full"
    default_detail = "The queue is full; retry later"


class BadRequestError(FalError):
    """A malformed request that is not a body validation error (e.g. a bad timeout header)."""

    status_code = 400
    error_type = "bad_request"
    default_detail = "Bad request"


class StartTimeoutError(FalError):
    """`X-Fal-Request-Timeout` passed before a worker started the request."""

    status_code = 504
    error_type = "request_timeout"
    default_detail = "Request timed out before it started"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "X-Fal-Request-Timeout-Type": "user"}


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


class InputValidationError(FalError):
    """A 422 for an input the schema accepted but that is still unusable (e.g. its image)."""

    status_code = 422
    error_type = "validation_error"

    def __init__(
        self,
        field: str,
        msg: str,
        type_: str = "value_error",
        *,
        location: str = "body",
        input_value: Any = None,
        request_id: str | None = None,
    ) -> None:
        extra = {} if input_value is None else {"input": input_value}
        self.error_type = type_
        super().__init__(
            validation_detail([location, field], msg, type_, **extra), request_id=request_id
        )
        self.args = (msg,)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}
