"""The synchronous API (fal.run): `POST /{app}` waits for the job and answers its output.

It rides the same queue as `/queue` (one worker per GPU serves both), so it honours the same
headers; if the client goes away before the job finishes, the job is cancelled.
"""

from __future__ import annotations

import asyncio

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from server.deps import (
    AuthDep,
    SettingsDep,
    StorageDep,
    StoreDep,
    SubmitOptions,
    SubmitOptionsDep,
    base_url,
    require_api_key,
)
from server.errors import AlreadyCompletedError
from server.jobs.base import Job, JobStore
from server.routes.queue import (
    ERROR_RESPONSES,
    REQUEST_ID_HEADER,
    absolute_result,
    raise_for_failed,
    submit_job,
)
from server.schemas import (
    I2V_APP,
    T2V_APP,
    OviImageToVideoInput,
    OviImageToVideoOutput,
    OviInput,
    OviOutput,
    RequestError,
    ValidationErrorBody,
)
from server.settings import ServerSettings
from server.storage import LocalStorage

router = APIRouter(
    tags=["sync"],
    dependencies=[Depends(require_api_key)],
    responses={
        **ERROR_RESPONSES,
        422: {"model": ValidationErrorBody, "description": "Invalid input or unusable image."},
        429: {"model": RequestError, "description": "The queue is full; retry later."},
        499: {"model": RequestError, "description": "The request was cancelled."},
        500: {"model": RequestError, "description": "The generation failed."},
        504: {"model": RequestError, "description": "Not started before X-Fal-Request-Timeout."},
    },
)


async def wait_for_job(store: JobStore, request_id: str, request: Request, poll_s: float) -> Job:
    """Poll the store until the job completes; cancel it if the client disconnects."""
    while True:
        job = await to_thread.run_sync(store.get, request_id)
        if job.done:
            return job
        if await request.is_disconnected():
            try:
                await to_thread.run_sync(store.cancel, request_id)
            except AlreadyCompletedError:
                pass
            return await to_thread.run_sync(store.get, request_id)
        await asyncio.sleep(poll_s)


async def _run(
    app_id: str,
    body: BaseModel,
    options: SubmitOptions,
    request: Request,
    settings: ServerSettings,
    store: JobStore,
    storage: LocalStorage,
    user_id: str,
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
    job = await wait_for_job(store, job.id, request, settings.poll_interval_s)
    raise_for_failed(job)
    assert job.result is not None
    return JSONResponse(
        absolute_result(job.result, base_url(request, settings)),
        headers={REQUEST_ID_HEADER: job.id},
    )


@router.post(f"/{T2V_APP}", response_model=OviOutput, summary="Text-to-video, synchronously")
async def run_text_to_video(
    body: OviInput,
    request: Request,
    options: SubmitOptionsDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    user_id: AuthDep,
) -> JSONResponse:
    """Generate a video with audio from a prompt and answer the output when done."""
    return await _run(T2V_APP, body, options, request, settings, store, storage, user_id)


@router.post(
    f"/{I2V_APP}", response_model=OviImageToVideoOutput, summary="Image-to-video, synchronously"
)
async def run_image_to_video(
    body: OviImageToVideoInput,
    request: Request,
    options: SubmitOptionsDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    user_id: AuthDep,
) -> JSONResponse:
    """Generate a video with audio from a first frame and a prompt; answer the output when
    done."""
    return await _run(I2V_APP, body, options, request, settings, store, storage, user_id)
