"""`fal_client.upload_file` against `ovi serve --preset tiny_1s`, then a generation from the upload.

Configured as docs/drop-in.md says: the environment variables (FAL_RUN_HOST, FAL_QUEUE_RUN_HOST,
SSL_CERT_FILE, FAL_KEY) plus the two upload constants fal-client 1.x has no variable for
(`fal_client.client.REST_URL`, `fal_client.client.CDN_URL`). Each scenario runs in a fresh
interpreter (this file as a script), printing one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from _e2e import check_mp4, run_client_script

I2V = "fal-ai/ovi/image-to-video"


def run_scenario(server, name: str, *args: str) -> Any:
    return run_client_script(server, __file__, name, *args)


def test_upload_file_then_generate(ovi_server, tmp_path) -> None:
    from PIL import Image

    image = tmp_path / "input image.png"
    Image.new("RGB", (72, 56), (10, 160, 90)).save(image)
    out = run_scenario(ovi_server, "upload_and_generate", str(image))

    uploads = ovi_server.url + "/files/uploads/"
    assert out["v3_url"].startswith(uploads) and out["v3_url"].endswith("/input_image.png")
    assert out["fallback_url"].startswith(uploads) and out["fallback_url"].endswith(".png")
    with ovi_server.http() as client:
        for url in (out["v3_url"], out["fallback_url"], out["async_url"]):
            r = client.get(url)
            assert r.status_code == 200 and r.content == image.read_bytes()
            assert r.headers["content-type"] == "image/png"
        video = out["result"]["video"]
        r = client.get(video["url"])
    assert r.status_code == 200 and len(r.content) == video["file_size"]
    check_mp4(r.content)


def test_upload_needs_the_api_key(ovi_server) -> None:
    out = run_scenario(ovi_server, "upload_with_wrong_key")
    assert out["status"] == 401


# --- scenarios (in a fresh interpreter configured by the environment) ---


def _point_uploads_at_server() -> None:
    """The drop-in recipe's upload lines (see docs/drop-in.md)."""
    import fal_client.client

    base = "https://" + os.environ["FAL_RUN_HOST"]
    fal_client.client.REST_URL = base
    fal_client.client.CDN_URL = base


def scenario_upload_and_generate(path: str) -> dict[str, Any]:
    import asyncio

    import fal_client

    _point_uploads_at_server()
    v3_url = fal_client.upload_file(path)  # default: /storage/auth/token + /files/upload
    with open(path, "rb") as f:  # fal's fallback: /storage/upload/initiate + PUT
        fallback_url = fal_client.upload(f.read(), "image/png", repository="fal")
    async_url = asyncio.run(fal_client.upload_file_async(path))
    result = fal_client.subscribe(
        I2V,
        arguments={
            "prompt": "A fox looks up. <S>Hi.<E>",
            "image_url": v3_url,
            "num_inference_steps": 2,
        },
    )
    return {
        "v3_url": v3_url,
        "fallback_url": fallback_url,
        "async_url": async_url,
        "result": result,
    }


def scenario_upload_with_wrong_key() -> dict[str, Any]:
    import fal_client
    import httpx

    _point_uploads_at_server()
    try:
        fal_client.SyncClient(key="wrong").upload(b"x", "image/png", repository="fal")
    except httpx.HTTPStatusError as e:
        return {"status": e.response.status_code}
    except fal_client.client.FalClientHTTPError as e:
        return {"status": e.status_code}
    raise AssertionError("upload with a wrong key succeeded")


if __name__ == "__main__":
    fn = globals()[f"scenario_{sys.argv[1]}"]
    print(json.dumps(fn(*sys.argv[2:])))
