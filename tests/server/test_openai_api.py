"""server/openai_api: the size mapping, progress from step logs, and the routes' validation
through the app (the SDK round trip is tests/e2e/test_openai_videos.py)."""

from __future__ import annotations

import io
import time

from _app import AUTH, KEY, RESULT, finish_next, make_settings, running_app
from PIL import Image

from server.jobs import Job, JobStatus
from server.openai_api.serving import closest_resolution, progress_of

BEARER = {"Authorization": f"Bearer {KEY}"}


def job(status: JobStatus) -> Job:
    return Job(id="j", app="fal-ai/ovi", input={}, status=status, priority="normal", created_at=0)


def test_closest_resolution() -> None:
    assert closest_resolution("720x720") == "720x720"
    assert closest_resolution("1280x720") == "960x512"
    assert closest_resolution("720x1280") == "512x960"
    assert closest_resolution("3000x1000") == "1120x448"


def test_progress_from_step_logs() -> None:
    assert progress_of(job(JobStatus.IN_QUEUE), []) == 0
    running = job(JobStatus.IN_PROGRESS)
    assert progress_of(running, ["Generating (4 steps)"]) == 0
    assert progress_of(running, ["Generating (4 steps)", "Step 1/4 (0.1s)"]) == 25
    assert progress_of(running, ["Step 4/4 (0.4s)", "Encoding MP4"]) == 99
    assert progress_of(job(JobStatus.COMPLETED), []) == 100


def test_routes_validate_and_map_to_the_queue(tmp_path) -> None:
    with running_app(make_settings(tmp_path / "data")) as (client, app):
        assert client.post("/v1/videos", json={"prompt": "x"}).status_code == 401
        r = client.post("/v1/videos", json={"prompt": "x", "size": "big"}, headers=BEARER)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "size"]
        r = client.post("/v1/videos", json={"prompt": "x", "colour": "red"}, headers=BEARER)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]
        r = client.post(
            "/v1/videos", content=b"[1]", headers={**BEARER, "content-type": "application/json"}
        )
        assert r.status_code == 422
        r = client.post(
            "/v1/videos", json={"prompt": "x", "num_inference_steps": 500}, headers=BEARER
        )
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]
        r = client.post(
            "/v1/videos",
            data={"prompt": "a cat", "size": "720x720", "seed": "5"},
            headers=BEARER,
        )
        assert r.status_code == 200, r.text
        video = r.json()
        assert video["status"] == "queued" and video["size"] == "720x720"
        stored = app.state.store.get(video["id"])
        assert stored.app == "fal-ai/ovi" and stored.input["resolution"] == "720x720"
        assert stored.input["seed"] == 5
        # a fal status poll sees the same job
        assert (
            client.get(f"/queue/fal-ai/ovi/requests/{video['id']}/status", headers=AUTH).status_code
            == 202
        )
        finish_next(app.state.store, logs=("Step 1/2 (0.1s)", "Step 2/2 (0.2s)"))
        done = client.get(f"/v1/videos/{video['id']}", headers=BEARER).json()
        assert done["status"] == "completed" and done["progress"] == 100
        assert done["completed_at"] <= time.time() + 1
        assert RESULT["video"]["url"].startswith("/files/outputs/")
        r = client.get(f"/v1/videos/{video['id']}/content", headers=BEARER)
        assert r.status_code == 404  # RESULT names a file that was never stored

        png = io.BytesIO()
        Image.new("RGB", (40, 32), (1, 2, 3)).save(png, format="PNG")
        r = client.post(
            "/v1/videos",
            data={"prompt": "a lamp"},
            files={"input_reference": ("f.png", png.getvalue(), "image/png")},
            headers=BEARER,
        )
        assert r.status_code == 200, r.text
        stored = app.state.store.get(r.json()["id"])
        assert stored.app == "fal-ai/ovi/image-to-video" and "image" in stored.input_files
        saved = app.state.storage.stat(stored.input_files["image"])
        assert saved.file_size == len(png.getvalue())
        r = client.post(
            "/v1/videos",
            data={"prompt": "a lamp"},
            files={"input_reference": ("f.png", b"not an image", "image/png")},
            headers=BEARER,
        )
        assert r.status_code == 422, r.text
