"""OpenAI-style videos API over the same queue and workers as fal's routes.

A `POST /v1/videos` becomes the fal input of `fal-ai/ovi` (text) or `fal-ai/ovi/image-to-video`
(with `input_reference`) and goes through `server.serving.Serving.submit`, so validation, the
image checks, the queue and the workers are the fal routes' own. A job reads back as OpenAI's
`Video`: `queued`/`in_progress`/`completed`/`failed`, `progress` from the worker's step logs.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

from anyio import to_thread
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from model.presets import VIDEO_FPS, get_preset
from server.errors import BadRequestError, FileNotFoundHTTPError, RequestInProgressError
from server.jobs import Job, JobAlreadyCompletedError, JobStatus
from server.openai_api.protocol import Video, VideoCreate, VideoDeleted, VideoError, VideoList
from server.schemas import I2V_APP, RESOLUTIONS, T2V_APP, OviImageToVideoInput, OviInput
from server.serving import Serving, Submission, replay
from server.storage import key_from_path

_STEP = re.compile(r"^Step (\d+)/(\d+)\b")


def closest_resolution(size: str) -> str:
    """The fal resolution (`WxH`) whose aspect ratio is closest to `size`'s (the model snaps the
    area to its variant anyway)."""
    if size in RESOLUTIONS:
        return size
    width, height = (int(v) for v in size.split("x"))
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be WIDTHxHEIGHT with positive sides, not {size!r}")
    ratio = width / height

    def distance(res: str) -> float:
        w, h = (int(v) for v in res.split("x"))
        return abs(w / h - ratio)

    return min(RESOLUTIONS, key=distance)


def data_uri(data: bytes, content_type: str | None) -> str:
    """An uploaded `input_reference` as a data URI (the fal input's `image_url`)."""
    kind = content_type if content_type and content_type.startswith("image/") else "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def progress_of(job: Job, logs: list[str]) -> int:
    """0 while queued, the share of denoising steps done while running (at most 99), 100 once
    completed (failed or not)."""
    if job.status is JobStatus.COMPLETED:
        return 100
    if job.status is JobStatus.IN_QUEUE:
        return 0
    for message in reversed(logs):
        match = _STEP.match(message)
        if match:
            done, total = int(match[1]), int(match[2])
            return min(99, 100 * done // max(1, total))
    return 0


_FIELD_NAMES = {"image_url": "input_reference", "resolution": "size"}


def _body_errors(exc: Exception) -> list[dict[str, Any]]:
    """A fal input's validation errors as `/v1/videos` body errors (OpenAI's field names)."""
    if not isinstance(exc, ValidationError):
        return [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]
    return [
        {
            "loc": ["body", *(_FIELD_NAMES.get(str(p), p) for p in err["loc"])],
            "msg": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False)
    ]


class VideoService:
    """`/v1/videos` logic; everything it refuses is raised like the fal routes' errors."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        settings = serving.settings
        self.model = settings.model_name
        try:  # a variant has one length: 121 frames at 24 fps is "5"
            self.seconds = str(round(get_preset(self.model).num_frames / VIDEO_FPS))
        except (KeyError, ValueError):
            self.seconds = "0"

    # --- reading ---

    def to_video(self, job: Job, logs: list[str] | None = None) -> Video:
        status = {
            JobStatus.IN_QUEUE: "queued",
            JobStatus.IN_PROGRESS: "in_progress",
            JobStatus.COMPLETED: "failed" if job.error is not None else "completed",
        }[job.status]
        retention = self.serving.settings.output_retention_s
        return Video(
            id=job.id,
            model=self.model,
            status=status,  # type: ignore[arg-type]
            progress=progress_of(job, logs or []),
            created_at=int(job.created_at),
            completed_at=int(job.finished_at) if job.finished_at else None,
            expires_at=int(job.finished_at + retention) if job.finished_at else None,
            prompt=job.input.get("prompt"),
            seconds=self.seconds,
            size=job.input.get("resolution", "auto"),
            error=VideoError(code=job.error.error_type, message=job.error.message)
            if job.error is not None
            else None,
        )

    async def retrieve(self, video_id: str, owner: str | None = None) -> Video:
        """The job as `owner` (None: anyone) may see it; another key's id is not found."""
        job = await self.serving.get(video_id, owner, with_input=True)
        logs: list[str] = []
        if job.status is JobStatus.IN_PROGRESS:
            entries = await to_thread.run_sync(self.serving.store.logs, job.id)
            logs = [e.message for e in entries]
        return self.to_video(job, logs)

    async def list(
        self, *, limit: int, after: str | None, order: str, user_id: str | None = None
    ) -> VideoList:
        if after is not None and user_id is not None:  # another key's id is an unknown cursor
            await self.serving.get(after, user_id)
        jobs: list[Job] = await to_thread.run_sync(
            lambda: self.serving.store.recent(
                limit=limit + 1, after=after, newest_first=order != "asc", user_id=user_id
            )
        )
        videos = [self.to_video(job) for job in jobs[:limit]]
        return VideoList(
            data=videos,
            first_id=videos[0].id if videos else None,
            last_id=videos[-1].id if videos else None,
            has_more=len(jobs) > limit,
        )

    # --- writing ---

    async def create(
        self,
        request: VideoCreate,
        submission: Submission,
        *,
        image: tuple[bytes, str | None] | None = None,
    ) -> Video:
        """Queue the job: text-to-video, or image-to-video when an image (uploaded file or
        `input_reference.image_url`) is given."""
        fields: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "audio_negative_prompt": request.audio_negative_prompt,
            "num_inference_steps": request.num_inference_steps,
            "seed": request.seed,
            "lora": request.lora,
            "fast": request.fast,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        image_url = request.input_reference.image_url if request.input_reference else None
        if image is not None:
            image_url = data_uri(*image)
        try:
            if image_url is not None:
                app, body = I2V_APP, OviImageToVideoInput(**fields, image_url=image_url)
            else:
                if request.size is not None:
                    fields["resolution"] = closest_resolution(request.size)
                app, body = T2V_APP, OviInput(**fields)
        except (ValidationError, ValueError) as e:  # fal's ranges: a 422 naming our field
            raise RequestValidationError(_body_errors(e)) from None
        job = await self.serving.submit(app, body, submission)
        return self.to_video(job)

    async def content(
        self, video_id: str, owner: str | None = None
    ) -> tuple[str, Iterator[bytes], int]:
        """The finished clip as (file name, byte chunks, size); 400 before it completes, the
        job's own error if it failed."""
        job = await self.serving.get(video_id, owner)
        if not job.done:
            raise RequestInProgressError(request_id=job.id)
        if job.error is not None:
            raise replay(job.error, job.id)
        assert job.result is not None
        url = job.result["video"]["url"]
        key = key_from_path(url if url.startswith("/") else "/" + url.split("/", 3)[-1])
        if key is None:
            raise BadRequestError("This video's file is not in this server's storage")
        storage = self.serving.storage
        try:
            stored = await to_thread.run_sync(storage.stat, key)
        except FileNotFoundError:
            raise FileNotFoundHTTPError("The video file is no longer stored (expired)") from None
        return stored.file_name, storage.read(key), stored.file_size

    async def delete(self, video_id: str, owner: str | None = None) -> VideoDeleted:
        """Cancel it if it has not finished, then forget it and delete its files (another
        owner's: not found, nothing cancelled)."""
        try:
            await self.serving.cancel(video_id, owner)
        except JobAlreadyCompletedError:
            pass
        job = await to_thread.run_sync(self.serving.store.delete, video_id)
        keys = list(job.input_files.values())
        if job.result and isinstance(job.result.get("video"), dict):
            url = job.result["video"].get("url", "")
            key = key_from_path(url if url.startswith("/") else "/" + url.split("/", 3)[-1])
            if key is not None:
                keys.append(key)
        for key in keys:
            await to_thread.run_sync(self.serving.storage.delete, key)
        return VideoDeleted(id=job.id)
