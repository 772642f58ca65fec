"""The OpenAI-style `/v1/videos` API with the real `openai` SDK (`client.videos`) against
`ovi serve --preset tiny_1s` (the session's e2e server, its real worker and queue)."""

from __future__ import annotations

import ssl
import time
import warnings
from collections.abc import Iterator

import openai
import pytest
from _e2e import API_KEY, check_mp4

STEPS = {"num_inference_steps": 2}


@pytest.fixture()
def client(ovi_server) -> Iterator[openai.OpenAI]:
    context = ssl.create_default_context(cafile=str(ovi_server.bundle))
    http = openai.DefaultHttpxClient(verify=context)
    sdk = openai.OpenAI(
        base_url=ovi_server.url + "/v1",
        api_key=API_KEY,
        http_client=http,
        max_retries=0,
        timeout=60,
    )
    with sdk:
        yield sdk


def wait(client: openai.OpenAI, video_id: str, timeout: float = 120) -> tuple[object, list]:
    """Poll until completed or failed; the video and every (status, progress) seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        video = client.videos.retrieve(video_id)
        seen.append((video.status, video.progress))
        if video.status in ("completed", "failed"):
            return video, seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def download(client: openai.OpenAI, video_id: str) -> bytes:
    with warnings.catch_warnings():  # the SDK marks its Sora helpers deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.videos.download_content(video_id).content


def test_text_to_video_lifecycle(client: openai.OpenAI) -> None:
    created = client.videos.create(
        prompt="A bell rings. <S>Ding.<E>", size="1280x720", extra_body={**STEPS, "seed": 4}
    )
    assert created.object == "video" and created.status == "queued" and created.progress == 0
    assert created.size == "960x512"  # the fal resolution closest to 16:9
    assert created.model == "tiny_1s" and created.seconds == "1"

    video, seen = wait(client, created.id)
    assert video.status == "completed" and video.progress == 100 and video.error is None, seen
    progress = [p for _, p in seen]
    assert progress == sorted(progress) and all(0 <= p <= 100 for p in progress), seen
    assert video.completed_at >= video.created_at and video.expires_at > video.completed_at
    check_mp4(download(client, video.id))

    listed = client.videos.list(limit=100)
    assert video.id in [v.id for v in listed.data]

    deleted = client.videos.delete(video.id)
    assert deleted.id == video.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_image_to_video_multipart_then_delete(client: openai.OpenAI) -> None:
    """The SDK's multipart upload of `input_reference` queues an image-to-video job (its size is
    the image's, "auto"); deleting it at once cancels it, so it costs no generation here (the
    route test checks the stored job is image-to-video with this image)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (80, 64), (240, 120, 20)).save(buf, format="PNG")
    created = client.videos.create(
        prompt="A lantern flickers.",
        input_reference=("frame.png", buf.getvalue(), "image/png"),
        extra_body=STEPS,
    )
    assert created.status == "queued" and created.size == "auto"
    assert client.videos.retrieve(created.id).id == created.id
    assert client.videos.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(created.id)


def test_list_pages_and_errors(client: openai.OpenAI, ovi_server) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        client.videos.create(prompt="", extra_body=STEPS)
    with pytest.raises(openai.UnprocessableEntityError):
        client.videos.create(prompt="x", extra_body={"num_inference_steps": 500})
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("no-such-video")

    long = client.videos.create(prompt="A long one.", extra_body={"num_inference_steps": 50})
    with pytest.raises(openai.BadRequestError):  # not finished: no content yet
        download(client, long.id)
    # the same queue as fal's routes: cancel it there, it reads back as failed here
    with ovi_server.http() as http:
        r = http.put(
            f"/queue/fal-ai/ovi/requests/{long.id}/cancel",
            headers={"Authorization": f"Key {API_KEY}"},
        )
        assert r.status_code == 202
    video, _ = wait(client, long.id)
    assert video.status == "failed" and video.error.code == "client_cancelled"

    first = client.videos.list(limit=1)
    assert len(first.data) == 1 and first.has_more
    second = client.videos.list(limit=1, after=first.data[0].id)
    assert second.data[0].id != first.data[0].id

    bad = openai.OpenAI(
        base_url=ovi_server.url + "/v1",
        api_key="wrong",
        http_client=openai.DefaultHttpxClient(
            verify=ssl.create_default_context(cafile=str(ovi_server.bundle))
        ),
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError):
        bad.videos.list()
    with ovi_server.http() as http:  # fal's `Key` scheme is accepted too
        assert (
            http.get("/v1/videos", headers={"Authorization": f"Key {API_KEY}"}).status_code == 200
        )
        assert http.get("/v1/videos").status_code == 401
