"""The sync API (fal.run): POST /{app} waits for the job and answers its output or error."""

from __future__ import annotations

from pathlib import Path

import pytest
from _app import AUTH, RESULT, background_worker, make_settings, running_app, store_of

import server.serving as serving
from server.jobs.base import JobError, Outcome


@pytest.fixture()
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    async def fake_load(url: str, settings, **kw) -> bytes:
        return b"image-bytes"

    monkeypatch.setattr(serving, "load_image_input", fake_load)
    with running_app(make_settings(tmp_path)) as (client, app):
        yield client, app


def test_run_returns_the_output(app_client) -> None:
    client, app = app_client
    with background_worker(store_of(app)):
        r = client.post("/fal-ai/ovi", json={"prompt": "x", "num_inference_steps": 2}, headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {
        **RESULT,
        "video": {**RESULT["video"], "url": "http://testserver" + RESULT["video"]["url"]},
    }
    rid = r.headers["x-fal-request-id"]
    assert store_of(app).get(rid).input["num_inference_steps"] == 2


def test_run_image_to_video_and_failure(app_client) -> None:
    client, app = app_client
    store = store_of(app)

    def fail(job) -> None:
        err = JobError(
            "Could not load image from url: x",
            "image_load_error",
            422,
            detail=[{"loc": ["body", "image_url"], "msg": "bad", "type": "image_load_error"}],
        )
        store.complete(job.id, "w-bg", Outcome(error=err))

    with background_worker(store, fail):
        r = client.post(
            "/fal-ai/ovi/image-to-video",
            json={"prompt": "x", "image_url": "https://a/b.png"},
            headers=AUTH,
        )
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "image_load_error"
    assert r.headers["x-fal-error-type"] == "image_load_error"
    assert r.headers["x-fal-request-id"]


def test_run_start_timeout_is_504(app_client) -> None:
    client, _ = app_client
    r = client.post(
        "/fal-ai/ovi", json={"prompt": "x"}, headers={**AUTH, "X-Fal-Request-Timeout": "0.1"}
    )
    assert r.status_code == 504
    assert r.headers["x-fal-request-timeout-type"] == "user"
    assert r.json()["error_type"] == "request_timeout"


def test_run_validates_and_authenticates(app_client) -> None:
    client, app = app_client
    assert client.post("/fal-ai/ovi", json={"prompt": "x"}).status_code == 401
    r = client.post("/fal-ai/ovi", json={"prompt": "x", "num_inference_steps": 0}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]
    assert store_of(app).counts()["IN_QUEUE"] == 0
