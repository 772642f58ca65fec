"""The per-endpoint OpenAPI documents against fal's published schemas (issue 12, item 7):
schema names, nullability, required fields, bounds, and the queue paths under the endpoint id."""

from __future__ import annotations

from typing import Any

import pytest

from server.schemas import I2V_APP, T2V_APP, queue_openapi

# fal's names for each endpoint's schemas (fal-js generated types and fal's OpenAPI)
FAL_NAMES = {
    T2V_APP: {"OviT2VRequest", "OviT2VResponse", "ResolutionEnum", "File", "QueueStatus"},
    I2V_APP: {"OviI2VRequest", "OviI2VResponse", "File", "QueueStatus"},
}
REQUEST = {T2V_APP: "OviT2VRequest", I2V_APP: "OviI2VRequest"}
RESPONSE = {T2V_APP: "OviT2VResponse", I2V_APP: "OviI2VResponse"}


def _doc(endpoint: str) -> dict[str, Any]:
    return queue_openapi(endpoint, "https://queue.example/queue")


def _types(prop: dict[str, Any]) -> set[str]:
    """The JSON types a property admits (`type` or an `anyOf` of them; a `$ref` is "ref")."""
    options = prop.get("anyOf", [prop])
    return {o.get("type", "ref" if "$ref" in o else "?") for o in options}


@pytest.mark.parametrize("endpoint", [T2V_APP, I2V_APP])
def test_schema_names_are_fals(endpoint: str) -> None:
    schemas = _doc(endpoint)["components"]["schemas"]
    ours = {"LogEntry", "LoraInput"}  # our extras (logs, the per-request `lora` field)
    assert FAL_NAMES[endpoint] <= set(schemas) <= FAL_NAMES[endpoint] | ours
    for name, schema in schemas.items():
        assert schema.get("title", name) == name


@pytest.mark.parametrize("endpoint", [T2V_APP, I2V_APP])
def test_request_nullability_and_bounds(endpoint: str) -> None:
    request = _doc(endpoint)["components"]["schemas"][REQUEST[endpoint]]
    props = request["properties"]
    assert request["required"] == (["prompt"] if endpoint == T2V_APP else ["prompt", "image_url"])
    assert _types(props["seed"]) == {"integer", "null"}  # integer-or-null, no bounds
    assert not {"minimum", "maximum"} & set(props["seed"])
    assert props["prompt"]["type"] == "string" and "minLength" not in props["prompt"]
    assert "noise" not in props  # our extra input stays out of fal's schema
    if endpoint == T2V_APP:
        assert props["resolution"]["$ref"] == "#/components/schemas/ResolutionEnum"
        assert props["resolution"]["default"] == "992x512"


@pytest.mark.parametrize("endpoint", [T2V_APP, I2V_APP])
def test_response_needs_only_the_seed(endpoint: str) -> None:
    response = _doc(endpoint)["components"]["schemas"][RESPONSE[endpoint]]
    assert response["required"] == ["seed"]
    assert _types(response["properties"]["video"]) == {"ref", "null"}
    assert response["properties"]["video"]["anyOf"][0] == {"$ref": "#/components/schemas/File"}
    assert _doc(endpoint)["components"]["schemas"]["File"]["required"] == ["url"]


@pytest.mark.parametrize("endpoint", [T2V_APP, I2V_APP])
def test_queue_paths_are_under_the_endpoint_id(endpoint: str) -> None:
    doc = _doc(endpoint)
    by_id = f"/{endpoint}/requests/{{request_id}}"
    assert set(doc["paths"]) == {f"/{endpoint}", by_id, f"{by_id}/status", f"{by_id}/cancel"}
    result = doc["paths"][by_id]["get"]["responses"]["200"]["content"]["application/json"]
    assert result["schema"] == {"$ref": f"#/components/schemas/{RESPONSE[endpoint]}"}
    post = doc["paths"][f"/{endpoint}"]["post"]["requestBody"]["content"]["application/json"]
    assert post["schema"] == {"$ref": f"#/components/schemas/{REQUEST[endpoint]}"}


def test_app_openapi_uses_fals_names(tmp_path) -> None:
    from server.main import create_app
    from server.settings import ServerSettings

    app = create_app(ServerSettings(data_dir=tmp_path, workers=0, api_keys=["k"]))
    schemas = app.openapi()["components"]["schemas"]
    assert {"OviT2VRequest", "OviT2VResponse", "OviI2VRequest", "OviI2VResponse"} <= set(schemas)
    assert {"ResolutionEnum", "File"} <= set(schemas)
    assert not {"OviInput", "OviOutput", "OviImageToVideoInput"} & set(schemas)
