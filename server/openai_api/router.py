"""`/v1/videos`: the OpenAI-style job API (thin: parse, call `VideoService`, shape the answer).

`Authorization: Bearer <key>` (the `openai` SDK's) or fal's `Key <key>`, against the same keys.
A key sees, lists, downloads and deletes only its own videos (another key's id is a 404, as an
unknown one); an admin key sees all.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from server.deps import BaseUrlDep, BearerCallerDep, SubmitOptionsDep, require_bearer_caller
from server.openai_api.protocol import Video, VideoCreate, VideoDeleted, VideoList
from server.openai_api.serving import VideoService
from server.routes.queue import STORE_UNAVAILABLE, SUBMIT_RESPONSES
from server.schemas import RequestError, ValidationErrorBody
from server.serving import Submission


def get_videos(request: Request) -> VideoService:
    return request.app.state.videos


VideosDep = Annotated[VideoService, Depends(get_videos)]

router = APIRouter(
    prefix="/v1/videos",
    tags=["openai"],
    dependencies=[Depends(require_bearer_caller)],
    responses={
        401: {"model": RequestError, "description": "Missing or invalid API key."},
        404: {"model": RequestError, "description": "Unknown video id (or another key's)."},
        **STORE_UNAVAILABLE,
    },
)


async def _parse_create(request: Request) -> tuple[VideoCreate, tuple[bytes, str | None] | None]:
    """The body as JSON or as a multipart form (`input_reference` a file); a 422 if invalid."""
    content_type = request.headers.get("content-type", "")
    image = None
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        data: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                data[name] = value
            elif name == "input_reference":
                image = (await value.read(), value.content_type)
            else:
                data[name] = (await value.read()).decode(errors="replace")
        if image is not None and image[0] == b"":
            image = None
    else:
        try:
            data = await request.json()
        except ValueError:
            raise RequestValidationError(
                [{"loc": ["body"], "msg": "body must be JSON or multipart", "type": "json_invalid"}]
            ) from None
        if not isinstance(data, dict):
            raise RequestValidationError(
                [{"loc": ["body"], "msg": "body must be a JSON object", "type": "model_type"}]
            )
    try:
        body = VideoCreate.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ["body", *err["loc"]]} for err in e.errors(include_url=False)]
        ) from None
    return body, image


@router.post(
    "",
    response_model=Video,
    responses={
        **SUBMIT_RESPONSES,
        422: {"model": ValidationErrorBody, "description": "Invalid input."},
    },
    summary="Create a video job",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": VideoCreate.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object"}},
            }
        }
    },
)
async def create_video(
    request: Request,
    videos: VideosDep,
    caller: BearerCallerDep,
    base: BaseUrlDep,
    options: SubmitOptionsDep,
) -> Video:
    """JSON or multipart (`input_reference` as a file: image-to-video). Answers at once with
    `status: "queued"`; poll `GET /v1/videos/{id}`."""
    body, image = await _parse_create(request)
    submission = Submission(options=options, user_id=caller.user_id, base_url=base)
    return await videos.create(body, submission, image=image)


@router.get("", response_model=VideoList, summary="List video jobs")
async def list_videos(
    videos: VideosDep,
    caller: BearerCallerDep,
    after: Annotated[str | None, Query(description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> VideoList:
    return await videos.list(limit=limit, after=after, order=order, user_id=caller.owner)


@router.get("/{video_id}", response_model=Video, summary="Retrieve a video job")
async def retrieve_video(video_id: str, videos: VideosDep, caller: BearerCallerDep) -> Video:
    """`status` queued/in_progress/completed/failed and `progress` 0-100."""
    return await videos.retrieve(video_id, caller.owner)


@router.get(
    "/{video_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "The MP4 (H.264 + AAC)."},
        400: {"model": RequestError, "description": "Not completed yet."},
    },
    summary="Download the video",
)
async def video_content(
    video_id: str,
    videos: VideosDep,
    caller: BearerCallerDep,
    variant: Annotated[Literal["video"], Query(description="Only `video` is served.")] = "video",
) -> StreamingResponse:
    name, chunks, size = await videos.content(video_id, caller.owner)
    return StreamingResponse(
        chunks,
        media_type="video/mp4",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )


@router.delete("/{video_id}", response_model=VideoDeleted, summary="Delete a video job")
async def delete_video(video_id: str, videos: VideosDep, caller: BearerCallerDep) -> VideoDeleted:
    """Cancels it if it is still queued or running, then deletes the job and its files."""
    return await videos.delete(video_id, caller.owner)
