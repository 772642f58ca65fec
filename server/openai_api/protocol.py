"""OpenAI-style videos API: the request and response shapes (as vLLM-Omni and SGLang serve them,
and as the `openai` SDK's `client.videos` resource sends and parses them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VideoStatus = Literal["queued", "in_progress", "completed", "failed"]


class ImageReference(BaseModel):
    """`input_reference` as JSON: an image by URL (https or a data URI)."""

    model_config = ConfigDict(extra="ignore")
    image_url: str = Field(description="First frame: an https URL or a data URI.")


class VideoCreate(BaseModel):
    """`POST /v1/videos` (JSON, or multipart form fields with `input_reference` as a file).

    `prompt`, `model`, `seconds`, `size` and `input_reference` are OpenAI's; the rest are Ovi's
    own knobs (the fal fields), accepted as extra body fields."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, description="Text prompt (Ovi's `<S>..<E>` speech tags).")
    model: str | None = Field(None, description="Ignored beyond reporting: the served variant.")
    seconds: str | int | None = Field(
        None, description="Ignored: a variant has one length (reported in the answer)."
    )
    size: str | None = Field(
        None,
        pattern=r"^\d{2,5}x\d{2,5}$",
        description="WIDTHxHEIGHT for text-to-video; mapped to the closest fal resolution.",
    )
    input_reference: ImageReference | None = Field(None, description="First frame: i2v.")
    negative_prompt: str | None = None
    audio_negative_prompt: str | None = None
    num_inference_steps: int | None = None
    seed: int | None = None
    # ovi-server's extras, as on the fal routes (`server.schemas`): per-request LoRAs, few-step
    lora: list[dict[str, Any]] | None = None
    fast: bool | None = None


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """One job as OpenAI's `Video` object."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: VideoStatus
    progress: int = Field(ge=0, le=100)
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    prompt: str | None = None
    seconds: str
    size: str
    remixed_from_video_id: str | None = None
    error: VideoError | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True
