"""The synchronous API (fal.run): `POST /{app}` waits for the job and answers its output.

It rides the same queue as `/queue` (one worker per GPU serves both), so it honours the same
headers; if the client goes away before the job finishes, the job is cancelled. One route per
input model of `server.schemas.INPUT_MODELS`; the logic is `server.serving.Serving.run`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from server.deps import ServingDep, SubmissionDep, require_api_key
from server.routes.queue import ERROR_RESPONSES, SUBMIT_RESPONSES, add_app_routes, answer
from server.schemas import OUTPUT_MODELS, RequestError

router = APIRouter(
    tags=["sync"],
    dependencies=[Depends(require_api_key)],
    responses={
        **ERROR_RESPONSES,
        **SUBMIT_RESPONSES,
        499: {"model": RequestError, "description": "The request was cancelled."},
        500: {"model": RequestError, "description": "The generation failed."},
        504: {"model": RequestError, "description": "Not started before X-Fal-Request-Timeout."},
    },
)


def run_endpoint(app_id: str) -> Callable[..., Awaitable[Any]]:
    async def run(
        body: BaseModel, request: Request, submission: SubmissionDep, serving: ServingDep
    ) -> JSONResponse:
        job, output = await serving.run(app_id, body, submission, request.is_disconnected)
        return answer(output, job.id)

    run.__doc__ = f"Generate a video with audio (`{app_id}`) and answer the output when done."
    return run


add_app_routes(
    router, run_endpoint, summary="{title}, synchronously", response_models=OUTPUT_MODELS
)
