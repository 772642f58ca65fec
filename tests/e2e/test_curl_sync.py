"""fal's own curl example for fal-ai/ovi/image-to-video (the sync API, fal.run), run with curl
against our https server: only the base URL is replaced (plus `--cacert` for our local CA)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from _e2e import API_KEY, check_mp4, png_data_uri

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")

# Verbatim from fal's page for the endpoint (https://fal.ai/models/fal-ai/ovi/image-to-video/api).
FAL_CURL_EXAMPLE = r"""curl --request POST \
  --url https://fal.run/fal-ai/ovi/image-to-video \
  --header "Authorization: Key $FAL_KEY" \
  --header "Content-Type: application/json" \
  --data '{
     "prompt": "An intimate close-up of a European woman with long dark hair as she gently brushes her hair in a softly lit bedroom, her delicate hand moving in the foreground. She looks directly into the camera with calm, focused eyes, a faint serene smile glowing in the warm lamp light. She says, <S>[soft whisper] I am an artificial intelligence.<E>.<AUDCAP>Soft whispering female voice, ASMR tone with gentle breaths, cozy room acoustics, subtle emphasis on \"I am an artificial intelligence\".<ENDAUDCAP>",
     "image_url": "https://storage.googleapis.com/falserverless/example_inputs/ovi_i2v_input.png"
   }'"""
EXAMPLE_IMAGE_URL = "https://storage.googleapis.com/falserverless/example_inputs/ovi_i2v_input.png"


def run_curl(server, command: str, *extra: str) -> tuple[dict, dict[str, str]]:
    """Run the example (base URL replaced, `--cacert` and `extra` flags added) with bash."""
    command = command.replace("https://fal.run", server.url, 1)
    flags = " ".join([f"--cacert {server.bundle}", "--silent", "--show-error", *extra])
    command = command.replace("curl ", f"curl {flags} ", 1)
    env = {**os.environ, "FAL_KEY": API_KEY}
    proc = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.replace("\r\n", "\n")  # --include: status line and headers first
    head, _, body = text.partition("\n\n")
    while body.startswith("HTTP/"):  # after a "100 Continue"
        head, _, body = body.partition("\n\n")
    status_line, *lines = head.split("\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    headers[":status"] = status_line.split()[1]
    return json.loads(body), headers


def test_fal_curl_example_verbatim(ovi_server) -> None:
    """The example as is. Offline (as in CI) its image cannot be fetched: fal's 422 shape naming
    that URL; with network access it generates a clip."""
    body, headers = run_curl(ovi_server, FAL_CURL_EXAMPLE, "--include")
    if headers[":status"] == "200":
        assert body["video"]["content_type"] == "video/mp4"
        return
    assert headers[":status"] == "422", body
    (item,) = body["detail"]
    assert item["loc"] == ["body", "image_url"] and item["type"] == "image_load_error"
    assert item["msg"].startswith(f"Could not load image from url: {EXAMPLE_IMAGE_URL}")


def test_fal_curl_example_with_a_local_image(ovi_server) -> None:
    """The same command with the image inlined as a data URI (and fewer steps): a real clip."""
    command = FAL_CURL_EXAMPLE.replace(EXAMPLE_IMAGE_URL, png_data_uri()).replace(
        '"prompt":', '"num_inference_steps": 2, "prompt":'
    )
    body, headers = run_curl(ovi_server, command, "--include")
    assert headers[":status"] == "200", body
    assert headers["x-fal-request-id"]
    assert set(body) == {"video", "seed"}
    video = body["video"]
    assert video["url"].startswith(ovi_server.url + "/files/outputs/")
    with ovi_server.http() as client:
        data = client.get(video["url"]).content
    assert len(data) == video["file_size"]
    check_mp4(data)
