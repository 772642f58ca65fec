"""server/main.py: the app as a whole: OpenAPI, the one error path, the lifespan's seams (store
and storage by URL), an API and a worker sharing only those two URLs, light imports."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _app import AUTH, KEY, make_settings, running_app, store_of
from PIL import Image

from server.jobs import SqliteJobStore
from server.storage import LocalStorage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def app_client(tmp_path: Path):
    with running_app(make_settings(tmp_path)) as pair:
        yield pair


def test_openapi_documents_every_endpoint(app_client) -> None:
    client, _ = app_client
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in (
        "/queue/fal-ai/ovi",
        "/queue/fal-ai/ovi/image-to-video",
        "/queue/fal-ai/ovi/requests/{request_id}/status",
        "/queue/fal-ai/ovi/image-to-video/requests/{request_id}",
        "/fal-ai/ovi",
        "/fal-ai/ovi/image-to-video",
        "/files/{kind}/{file_id}/{name}",
        "/health",
    ):
        assert path in paths, path
    for prefix, name in (("/queue", "QueueStatus"), ("", "OviI2VResponse")):
        post = paths[f"{prefix}/fal-ai/ovi/image-to-video"]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.endswith("/OviI2VRequest")
        answer = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert answer.endswith("/" + name)
        assert {"401", "422", "429"} <= set(post["responses"])
    t2v = paths["/queue/fal-ai/ovi"]["post"]["requestBody"]["content"]["application/json"]
    assert t2v["schema"]["$ref"].endswith("/OviT2VRequest")
    assert "apiKeyAuth" in doc["components"]["securitySchemes"]
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_unhandled_errors_are_500_with_fal_shape(
    app_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = app_client

    def explode(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_of(app), "get", explode)  # (/health reports store faults itself)
    r = client.get("/queue/fal-ai/ovi/requests/abc/status", headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {"detail": "Internal server error", "error_type": "internal_error"}
    assert r.headers["x-fal-error-type"] == "internal_error"


def test_starlette_refusals_keep_their_detail_and_gain_an_error_type(app_client) -> None:
    client, _ = app_client
    r = client.get("/no/such/path")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found", "error_type": "not_found"}
    assert r.headers["x-fal-request-id"]
    r = client.delete("/health")
    assert r.status_code == 405
    assert r.json() == {"detail": "Method Not Allowed", "error_type": "method_not_allowed"}


def test_store_and_storage_come_from_their_urls(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    settings = make_settings(
        tmp_path / "data",
        job_store=f"sqlite:///{shared / 'queue.db'}",
        storage=(shared / "blobs").as_uri(),
    )
    with running_app(settings) as (client, app):
        assert isinstance(app.state.store, SqliteJobStore)
        assert app.state.store.path == shared / "queue.db"
        assert isinstance(app.state.storage, LocalStorage)
        assert app.state.storage.root == (shared / "blobs").resolve()
        assert client.post("/queue/fal-ai/ovi", json={"prompt": "x"}, headers=AUTH).is_success
    assert not (tmp_path / "data" / "jobs.sqlite3").exists()


def _png_data_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_api_and_worker_share_only_the_two_urls(tmp_path: Path, tiny_pipeline) -> None:
    """An API and a worker with separate data dirs (as on two machines), sharing the job store
    and the storage by URL: the worker reads the input image the API stored and the API serves
    the output the worker stored."""
    from server.settings import ServerSettings
    from server.worker import run_worker

    shared = {
        "job_store": f"sqlite:///{tmp_path / 'shared' / 'jobs.sqlite3'}",
        "storage": (tmp_path / "shared" / "files").as_uri(),
    }
    api_settings = make_settings(tmp_path / "api", **shared)
    worker_settings = ServerSettings(
        data_dir=tmp_path / "worker", poll_interval_s=0.02, heartbeat_interval_s=0.1, **shared
    )
    stop = threading.Event()
    worker = threading.Thread(
        target=run_worker,
        args=(worker_settings, "w-remote"),
        kwargs={"stop_event": stop, "pipeline": tiny_pipeline},
    )
    with running_app(api_settings) as (client, app):
        body = {"prompt": "a cat", "image_url": _png_data_uri(), "num_inference_steps": 2}
        submitted = client.post("/queue/fal-ai/ovi/image-to-video", json=body, headers=AUTH)
        assert submitted.status_code == 200, submitted.text
        rid = submitted.json()["request_id"]
        (input_key,) = store_of(app).get(rid).input_files.values()
        worker.start()
        try:
            deadline = time.monotonic() + 120
            while not store_of(app).get(rid).done:
                assert time.monotonic() < deadline, "the worker did not finish in time"
                time.sleep(0.05)
        finally:
            stop.set()
            worker.join(30)
        result = client.get(f"/queue/fal-ai/ovi/requests/{rid}", headers=AUTH)
        assert result.status_code == 200, result.text
        video = result.json()["video"]
        assert video["url"].startswith("http://testserver/files/outputs/")
        served = client.get(video["url"].removeprefix("http://testserver"))
        assert served.status_code == 200 and len(served.content) == video["file_size"] > 0
        assert served.content[4:8] == b"ftyp"  # an MP4
        with pytest.raises(FileNotFoundError):  # the input is gone once the job is done
            app.state.storage.stat(input_key)
    assert not (tmp_path / "worker" / "files").exists()  # nothing went to the worker's own dir
    assert not (tmp_path / "api" / "files").exists()


def test_the_api_process_imports_neither_torch_nor_the_worker(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from server.main import create_app\n"
        "from server.settings import ServerSettings\n"
        f"s = ServerSettings(data_dir={str(tmp_path)!r}, workers=0, api_keys=[{KEY!r}])\n"
        "with TestClient(create_app(s)) as c:\n"
        "    assert c.get('/health').status_code == 503\n"
        "heavy = ('torch', 'server.worker', 'model.pipeline')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
