"""server/errors.py: status codes, bodies and headers of fal's error shapes, and `fal_error`, the
one mapping from whatever was raised to an answer."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from server.errors import (
    AlreadyCompletedError,
    BackPressureError,
    FalError,
    InputValidationError,
    JobFailedError,
    RangeNotSatisfiableError,
    RequestInProgressError,
    RequestNotFoundError,
    StartTimeoutError,
    UnauthorizedError,
    error_response,
    fal_error,
)
from server.fetch import ImageInputError
from server.jobs import JobAlreadyCompletedError, JobNotFoundError, QueueFullError


def test_request_errors_have_detail_error_type_and_header() -> None:
    for cls, status in (
        (RequestNotFoundError, 404),
        (RequestInProgressError, 400),
        (BackPressureError, 429),
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
    assert UnauthorizedError().headers()["WWW-Authenticate"] == "Key"
    assert RangeNotSatisfiableError(10).headers()["Content-Range"] == "bytes */10"


def test_special_bodies() -> None:
    assert AlreadyCompletedError().body()["status"] == "ALREADY_COMPLETED"
    err = InputValidationError.for_field(
        "image_url", "Could not load image from url: x", "image_load_error"
    )
    assert err.status_code == 422 and err.headers()["X-Fal-Error-Type"] == "image_load_error"
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


@pytest.mark.parametrize(
    ("raised", "status", "body", "request_id"),
    [
        (JobNotFoundError("r1"), 404, {"detail": "Request not found"}, None),
        (JobAlreadyCompletedError("r1"), 400, {"status": "ALREADY_COMPLETED"}, "r1"),
        (QueueFullError("r1"), 429, {"error_type": "queue_full"}, "r1"),
        (HTTPException(405, "Method Not Allowed"), 405, {"detail": "Method Not Allowed"}, None),
        (RuntimeError("boom"), 500, {"detail": "Internal server error"}, None),
    ],
)
def test_everything_raised_maps_to_one_answer(raised, status, body, request_id) -> None:
    error = fal_error(raised)
    assert isinstance(error, FalError) and error.status_code == status
    assert body.items() <= error.body().items()
    assert error.headers().get("x-fal-request-id") == request_id
    response = error_response(raised)
    assert response.status_code == status


def test_input_errors_are_fal_422s() -> None:
    image = fal_error(ImageInputError("https://x/a.png", "HTTP 404 from x"))
    assert image.status_code == 422 and image.headers()["X-Fal-Error-Type"] == "image_load_error"
    assert image.body()["detail"][0]["loc"] == ["body", "image_url"]
    schema = fal_error(
        RequestValidationError(
            [
                {
                    "loc": ("body", "seed"),
                    "msg": "bad",
                    "type": "int_parsing",
                    "ctx": {"e": ValueError("v")},
                }
            ]
        )
    )
    assert schema.status_code == 422 and "X-Fal-Error-Type" not in schema.headers()
    assert schema.body() == {
        "detail": [
            {"loc": ["body", "seed"], "msg": "bad", "type": "int_parsing", "ctx": {"e": "v"}}
        ]
    }
