"""server/schemas.py: fal's field order, defaults and ranges; unknown fields ignored."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.schemas import (
    FAL_FIELDS,
    RESOLUTIONS,
    OviImageToVideoInput,
    OviInput,
    OviOutput,
    QueueStatus,
    queue_openapi,
)


def test_field_order_and_defaults() -> None:
    fal = [f for f in OviImageToVideoInput.model_fields if f != "noise"]  # `noise`: ours, hidden
    assert fal[: len(FAL_FIELDS) + 1] == [*FAL_FIELDS, "image_url"]
    assert fal == [
        "prompt",
        "negative_prompt",
        "num_inference_steps",
        "audio_negative_prompt",
        "seed",
        "image_url",
        "lora",  # ovi-server's extras after fal's fields (off by default: test_lora_inputs.py)
        "fast",
    ]
    assert list(OviInput.model_fields)[-3] == "resolution"
    t2v = OviInput(prompt="x")
    assert t2v.negative_prompt == "jitter, bad hands, blur, distortion"
    assert t2v.audio_negative_prompt == "robotic, muffled, echo, distorted"
    assert t2v.num_inference_steps == 30 and t2v.seed is None and t2v.resolution == "992x512"
    assert RESOLUTIONS == tuple("512x992 992x512 960x512 512x960 720x720 448x1120 1120x448".split())


def test_defaults_are_fals() -> None:
    # fal's published defaults, which are also the official release's (model.sampling).
    for model in (OviInput, OviImageToVideoInput):
        assert (
            model.model_fields["negative_prompt"].default == "jitter, bad hands, blur, distortion"
        )
        assert (
            model.model_fields["audio_negative_prompt"].default
            == "robotic, muffled, echo, distorted"
        )
        assert model.model_fields["num_inference_steps"].default == 30


def test_unknown_fields_are_ignored() -> None:
    body = OviImageToVideoInput(prompt="x", image_url="https://a/b.png", sync_mode=True)
    assert "sync_mode" not in body.model_dump()


@pytest.mark.parametrize(
    "bad",
    [
        {"num_inference_steps": 0},
        {"num_inference_steps": 51},
        {"seed": 2**64},
        {"seed": -(2**63) - 1},
        {"seed": "abc"},
        {"noise": "gpu"},
        {"resolution": "1024x1024"},
    ],
)
def test_invalid_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        OviInput(**{"prompt": "x", **bad})


def test_json_schema_is_fals() -> None:
    schema = OviInput.model_json_schema()
    assert schema["required"] == ["prompt"]
    assert schema["x-fal-order-properties"][-3:] == ["resolution", "lora", "fast"]
    assert schema["properties"]["seed"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    steps = schema["properties"]["num_inference_steps"]
    assert (steps["minimum"], steps["maximum"], steps["default"]) == (1, 50, 30)
    assert OviOutput.model_json_schema()["required"] == ["seed"]  # fal: video is nullable
    assert QueueStatus.model_json_schema()["properties"]["status"]["enum"] == [
        "IN_QUEUE",
        "IN_PROGRESS",
        "COMPLETED",
    ]


def test_queue_openapi_for_text_to_video() -> None:
    doc = queue_openapi("fal-ai/ovi", "https://h/queue")
    assert set(doc["components"]["schemas"]) >= {
        "QueueStatus", "OviT2VRequest", "OviT2VResponse", "File", "ResolutionEnum"
    }  # fmt: skip
    post = doc["paths"]["/fal-ai/ovi"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OviT2VRequest"
    }
    assert doc["security"] == [{"apiKeyAuth": []}]
    with pytest.raises(KeyError):
        queue_openapi("fal-ai/nope", "https://h")


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**64 - 1, 0])
def test_seeds_torch_accepts_are_taken_as_given(seed: int) -> None:
    # clients send -1 for "random"; torch.Generator.manual_seed takes -2**63 .. 2**64-1
    assert OviInput(prompt="x", seed=seed).seed == seed


def test_empty_prompt_is_accepted() -> None:
    assert OviInput(prompt="").prompt == "" and OviImageToVideoInput(prompt=" ", image_url="u")
