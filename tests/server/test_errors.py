"""server/errors.py: status codes, bodies and headers of fal's error shapes."""

from __future__ import annotations

from server.errors import (
    AlreadyCompletedError,
    InputValidationError,
    JobFailedError,
    QueueFullError,
    RequestInProgressError,
    RequestNotFoundError,
    StartTimeoutError,
    UnauthorizedError,
)


def test_request_errors_have_detail_error_type_and_header() -> None:
    for cls, status in (
        (RequestNotFoundError, 404),
        (RequestInProgressError, 400),
        (QueueFullError, 429),
        (UnauthorizedError, 401),
        (StartTimeoutError, 504),
    ):
        err = cls(request_id="r1")
        assert err.status_code == status
        assert set(err.body()) == {"detail", "error_type"}
        assert err.headers()["X-Fal-Error-Type"] == err.error_type
        assert err.headers()["x-fal-request-id"] == "r1"
    assert RequestInProgressError().body()["detail"] == "Request is still in progress"
    assert StartTimeoutError().headers()["X-Fal-Request-Timeout-Type"] == "user"


def test_special_bodies() -> None:
    assert AlreadyCompletedError().body()["status"] == "ALREADY_COMPLETED"
    err = InputValidationError("image_url", "Could not load image from url: x", "image_load_error")
    assert err.status_code == 422
    assert err.body() == {
        "detail": [
            {
                "loc": ["body", "image_url"],
                "msg": "Could not load image from url: x",
                "type": "image_load_error",
            }
        ]
    }
    failed = JobFailedError(status_code=503, error_type="runner_disconnected", detail="gone")
    assert failed.status_code == 503 and failed.body() == {
        "detail": "gone",
        "error_type": "runner_disconnected",
    }
