"""fal's wire format for the two Ovi endpoints: inputs, outputs, queue status, and their OpenAPI.

Field names, order, defaults, ranges, nullability, descriptions and schema names are fal's
(`fal-ai/ovi`, `fal-ai/ovi/image-to-video`: its OpenAPI and fal-js generated types name them
`OviT2VRequest`/`OviT2VResponse`, `OviI2VRequest`/`OviI2VResponse`, `ResolutionEnum`, `File`; the
older names here, `OviInput` and so on, are aliases). Unknown input fields are ignored, as fal
does; invalid ones give FastAPI's 422 `{"detail": [{"loc", "msg", "type"}]}`. One extra input,
`noise`, is ours and left out of the published schemas (fal ignores it). The default negative
prompts are the model's own (`model.sampling`, a light module: no torch in the API process).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from model.options import NoiseMode
from model.sampling import DEFAULT_AUDIO_NEGATIVE_PROMPT, DEFAULT_VIDEO_NEGATIVE_PROMPT, SEED_RANGE

T2V_APP = "fal-ai/ovi"
I2V_APP = "fal-ai/ovi/image-to-video"
APPS: tuple[str, ...] = (T2V_APP, I2V_APP)
APP_TITLES: dict[str, str] = {T2V_APP: "text-to-video", I2V_APP: "image-to-video"}
QUEUE_APP = "fal-ai/ovi"  # fal's clients look every request up under owner/alias, sub-path dropped

DEFAULT_NEGATIVE_PROMPT = DEFAULT_VIDEO_NEGATIVE_PROMPT  # fal's field name is negative_prompt

RESOLUTIONS: tuple[str, ...] = (
    "512x992",
    "992x512",
    "960x512",
    "512x960",
    "720x720",
    "448x1120",
    "1120x448",
)


# fal's t2v `resolution` values ("WxH"); a str enum, so `.split("x")` works on a member.
class ResolutionEnum(str, Enum):
    r512x992 = "512x992"
    r992x512 = "992x512"
    r960x512 = "960x512"
    r512x960 = "512x960"
    r720x720 = "720x720"
    r448x1120 = "448x1120"
    r1120x448 = "1120x448"


Resolution = ResolutionEnum  # the older name

EXAMPLE_PROMPT = (
    "An intimate close-up of a European woman with long dark hair as she gently brushes her hair"
    " in a softly lit bedroom, her delicate hand moving in the foreground. She looks directly into"
    " the camera with calm, focused eyes, a faint serene smile glowing in the warm lamp light. She"
    " says, <S>[soft whisper] I am an artificial intelligence.<E>.<AUDCAP>Soft whispering female"
    ' voice, ASMR tone with gentle breaths, cozy room acoustics, subtle emphasis on "I am an'
    ' artificial intelligence".<ENDAUDCAP>'
)
EXAMPLE_IMAGE_URL = "https://storage.googleapis.com/falserverless/example_inputs/ovi_i2v_input.png"

MIN_SEED, MAX_SEED = SEED_RANGE  # what torch.Generator.manual_seed accepts
MAX_REQUEST_LORAS = 4  # per-request LoRAs (the `lora` extra field)


class _InputChecks(BaseModel):
    """Checks fal's schema does not spell out but the model needs: a 422 now beats a failed
    job later. They leave the JSON schema exactly fal's (an empty prompt is fine, as on fal)."""

    @field_validator("seed", check_fields=False)
    @classmethod
    def _seed_range(cls, value: int | None) -> int | None:
        # negative seeds (clients send -1 for "random") are used as given, and echoed back
        if value is not None and not MIN_SEED <= value <= MAX_SEED:
            raise ValueError(f"seed must be between {MIN_SEED} and {MAX_SEED}")
        return value


# --- inputs -------------------------------------------------------------------------------------


class _CommonInput(_InputChecks):
    """The fields both endpoints share, in fal's order (subclasses append theirs last)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(
        ..., description="The text prompt to guide video generation.", examples=[EXAMPLE_PROMPT]
    )
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT, description="Negative prompt for video generation."
    )
    num_inference_steps: int = Field(30, ge=1, le=50, description="The number of inference steps.")
    audio_negative_prompt: str = Field(
        DEFAULT_AUDIO_NEGATIVE_PROMPT, description="Negative prompt for audio generation."
    )
    seed: int | None = Field(
        None,
        title="Seed",
        description="Random seed for reproducibility. If None, a random seed is chosen.",
    )
    # ours, not fal's: the initial-noise procedure (`RuntimeOptions.noise`); None: the server's
    noise: SkipJsonSchema[NoiseMode | None] = None


FAL_FIELDS: tuple[str, ...] = tuple(f for f in _CommonInput.model_fields if f != "noise")


def _fal_order(*last: str) -> ConfigDict:
    order = [*FAL_FIELDS, *last]
    return ConfigDict(extra="ignore", json_schema_extra={"x-fal-order-properties": order})


class LoraInput(BaseModel):
    """One per-request LoRA: a file of the server's LoRA folder (`path`, a name inside the
    `lora_dir` setting) or one of its stored files (`url`, a `/files/...` URL of an upload),
    never an arbitrary local path or a foreign URL."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None, description="A LoRA file name inside the server's LoRA folder (`lora_dir`)."
    )
    url: str | None = Field(
        None, description="A LoRA file uploaded to this server's storage (its /files URL)."
    )
    scale: float = Field(1.0, ge=-10, le=10, description="Strength of the LoRA.")

    @model_validator(mode="after")
    def _one_source(self) -> LoraInput:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of path and url")
        return self


class _OviExtras(BaseModel):
    """ovi-server's own fields, after fal's (mixed in first, so fal's order stays in front).
    Their defaults are fal's behaviour: a fal request runs as on fal."""

    lora: list[LoraInput] = Field(
        default_factory=list,
        max_length=MAX_REQUEST_LORAS,
        description="ovi-server extra: LoRAs applied to this request only (unmerged), each from"
        " the server's LoRA folder or its storage.",
    )
    fast: bool = Field(
        False,
        description="ovi-server extra: the few-step mode (FastWan LoRA on the video tower, 6"
        " steps, 10 for 10 s, guidance 1, shift 6; num_inference_steps is ignored).",
    )


class _OviFalInput(_CommonInput):
    """fal's input of `fal-ai/ovi`."""

    model_config = _fal_order("resolution")

    resolution: ResolutionEnum = Field(
        ResolutionEnum.r992x512,
        description="Resolution of the generated video in W:H format. One of (512x992, 992x512,"
        " 960x512, 512x960, 720x720, 448x1120 or 1120x448).",
    )


class _OviImageToVideoFalInput(_CommonInput):
    """fal's input of `fal-ai/ovi/image-to-video`."""

    model_config = _fal_order("image_url")

    image_url: str = Field(
        ...,
        description="The image URL to guide video generation.",
        examples=[EXAMPLE_IMAGE_URL],
    )


class OviT2VRequest(_OviExtras, _OviFalInput):
    """Input of `fal-ai/ovi` (text-to-video): fal's fields, then ovi-server's extras."""

    model_config = _fal_order("resolution", *_OviExtras.model_fields)


class OviI2VRequest(_OviExtras, _OviImageToVideoFalInput):
    """Input of `fal-ai/ovi/image-to-video`: fal's fields, then ovi-server's extras."""

    model_config = _fal_order("image_url", *_OviExtras.model_fields)


OviInput, OviImageToVideoInput = OviT2VRequest, OviI2VRequest  # the older names
INPUT_MODELS: dict[str, type[BaseModel]] = {T2V_APP: OviT2VRequest, I2V_APP: OviI2VRequest}


# --- outputs ------------------------------------------------------------------------------------


class File(BaseModel):
    """A generated file, downloadable from `url`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-fal-order-properties": ["url", "content_type", "file_name", "file_size"]
        }
    )

    url: str = Field(..., description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(
        None, description="The mime type of the file.", examples=["video/mp4"]
    )
    file_name: str | None = Field(
        None, description="The name of the file. It will be auto-generated if not provided."
    )
    file_size: int | None = Field(None, description="The size of the file in bytes.")


class OviT2VResponse(BaseModel):
    """Output of `fal-ai/ovi`. As fal publishes it, only `seed` is required (`video` is
    nullable); this server always sends the video."""

    model_config = ConfigDict(json_schema_extra={"x-fal-order-properties": ["video", "seed"]})

    video: File | None = Field(None, description="The generated video file.")
    seed: int = Field(..., description="The seed used for generation.")


class OviI2VResponse(OviT2VResponse):
    """Output of `fal-ai/ovi/image-to-video` (same fields)."""


OviOutput, OviImageToVideoOutput = OviT2VResponse, OviI2VResponse  # the older names
OUTPUT_MODELS: dict[str, type[BaseModel]] = {T2V_APP: OviT2VResponse, I2V_APP: OviI2VResponse}


# --- queue --------------------------------------------------------------------------------------

QueueState = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class LogEntry(BaseModel):
    message: str
    level: str = Field(..., examples=["INFO"])
    source: str = Field(..., examples=["USER"])
    timestamp: str = Field(..., description="ISO 8601, UTC.")


class QueueStatus(BaseModel):
    """What submit and status answer. Only these three states exist: failures and
    cancellations are COMPLETED with `error` and `error_type`."""

    status: QueueState
    request_id: str = Field(..., description="The request id.")
    response_url: str | None = Field(None, description="The response url.")
    status_url: str | None = Field(None, description="The status url.")
    cancel_url: str | None = Field(None, description="The cancel url.")
    logs: list[LogEntry] | None = Field(None, description="Per-step progress; only with `logs=1`.")
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="`inference_time` (seconds) once completed."
    )
    queue_position: int | None = Field(None, description="0-based position while IN_QUEUE.")
    error: str | None = Field(None, description="Why a COMPLETED request failed.")
    error_type: str | None = Field(None, description="Machine-readable error category.")
    gateway_request_id: str | None = Field(
        None, description="Echoed in webhook deliveries (submit with `fal_webhook`)."
    )


class CancelResponse(BaseModel):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]


class RequestError(BaseModel):
    """fal's request-error body; the same `error_type` is in header `X-Fal-Error-Type`."""

    detail: str
    error_type: str


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ValidationErrorItem]


class HealthStatus(BaseModel):
    status: Literal["ready", "degraded", "warming", "failed"]
    reasons: list[str] = Field(
        default_factory=list,
        description="Why the state is `degraded` or `failed` (with a valid key only).",
    )
    model: str | None = Field(
        None, description="Variant or preset the workers load (with a valid key only)."
    )
    workers: list[dict[str, Any]] = Field(
        default_factory=list, description="Live workers (with a valid key only)."
    )
    queue: dict[str, int] = Field(default_factory=dict)


# --- fal's per-endpoint queue OpenAPI -----------------------------------------------------------


def queue_openapi(endpoint_id: str, server_url: str) -> dict[str, Any]:
    """The queue OpenAPI document fal publishes per endpoint (`openapi` 3.0.4)."""
    if endpoint_id not in INPUT_MODELS:
        raise KeyError(endpoint_id)
    input_model, output_model = INPUT_MODELS[endpoint_id], OUTPUT_MODELS[endpoint_id]
    input_name, output_name = input_model.__name__, output_model.__name__  # fal's names
    ref = "#/components/schemas/{model}"

    schemas: dict[str, Any] = {}

    def add(model: type[BaseModel], name: str) -> None:
        schema = model.model_json_schema(ref_template=ref, mode="validation")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(def_name, definition)
        schema["title"] = name
        schemas[name] = schema

    queue_status = QueueStatus.model_json_schema(ref_template=ref)
    for def_name, definition in queue_status.pop("$defs", {}).items():
        schemas.setdefault(def_name, definition)
    queue_status["required"] = ["status", "request_id"]
    schemas["QueueStatus"] = queue_status
    add(input_model, input_name)
    add(output_model, output_name)

    def ref_to(name: str) -> dict[str, str]:
        return {"$ref": ref.format(model=name)}

    def json_response(name: str, description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": ref_to(name)}},
        }

    request_id_param = {
        "name": "request_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "Request ID",
    }
    by_id = f"/{endpoint_id}/requests/{{request_id}}"  # fal's: under the full endpoint id
    paths: dict[str, Any] = {
        f"{by_id}/status": {
            "get": {
                "parameters": [
                    request_id_param,
                    {
                        "name": "logs",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number"},
                        "description": "Whether to include logs (`1`) in the response or not (`0`).",
                    },
                ],
                "responses": {
                    "200": json_response("QueueStatus", "The request status."),
                    "202": json_response("QueueStatus", "The request is queued or running."),
                },
            }
        },
        f"{by_id}/cancel": {
            "put": {
                "parameters": [request_id_param],
                "responses": {
                    "202": {
                        "description": "The request was cancelled.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {
                                            "type": "string",
                                            "enum": ["CANCELLATION_REQUESTED"],
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "400": {"description": "The request already completed."},
                },
            }
        },
        f"/{endpoint_id}": {
            "post": {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref_to(input_name)}},
                },
                "responses": {"200": json_response("QueueStatus", "The request status.")},
            }
        },
        by_id: {
            "get": {
                "parameters": [request_id_param],
                "responses": {"200": json_response(output_name, "Result of the request.")},
            }
        },
    }
    return {
        "openapi": "3.0.4",
        "info": {
            "title": "Queue OpenAPI for " + endpoint_id,
            "version": "1.0.0",
            "description": "The OpenAPI schema for the " + endpoint_id + " queue.",
            "x-fal-metadata": {
                "endpointId": endpoint_id,
                "category": APP_TITLES[endpoint_id],
            },
        },
        "components": {
            "securitySchemes": {
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": 'Fal Key: "Key <key>"',
                }
            },
            "schemas": schemas,
        },
        "paths": paths,
        "servers": [{"url": server_url}],
        "security": [{"apiKeyAuth": []}],
    }
