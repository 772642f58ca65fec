"""server/main.py: CORS, the queue host, OpenAPI, error handlers, webhooks pumped on completion."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from _app import AUTH, RESULT, finish_next, make_settings, running_app, store_of

from server.jobs.base import JobError, JobStatus, NewJob, WorkerInfo
from server.main import MAX_JSON_BODY_BYTES, Maintenance, QueueHostMiddleware


@pytest.fixture()
def app_client(tmp_path: Path):
    with running_app(make_settings(tmp_path, cors_origins=["https://app.example"])) as pair:
        yield pair


def test_cors_preflight_allows_fal_headers(app_client) -> None:
    client, _ = app_client
    r = client.options(
        "/queue/fal-ai/ovi",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-fal-queue-priority, x-fal-new-thing",
        },
    )
    assert r.status_code == 200
    allowed = r.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "x-fal-queue-priority", "x-fal-new-thing"):
        assert header in allowed
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    bad = client.options(
        "/queue/fal-ai/ovi",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert bad.status_code == 400


def test_cors_exposes_request_id(app_client) -> None:
    client, _ = app_client
    r = client.post(
        "/queue/fal-ai/ovi", json={"prompt": "x"}, headers={**AUTH, "Origin": "https://app.example"}
    )
    assert r.status_code == 200
    assert "x-fal-request-id" in r.headers["access-control-expose-headers"]


def test_oversized_bodies_are_413_before_auth(app_client) -> None:
    client, app = app_client
    big = b"x" * (MAX_JSON_BODY_BYTES + 1)
    origin = {"Origin": "https://app.example", "Content-Type": "application/json"}
    r = client.post("/queue/fal-ai/ovi", content=big, headers=origin)  # no key: still 413
    assert r.status_code == 413 and r.json()["error_type"] == "request_too_large"
    assert r.headers["x-fal-error-type"] == "request_too_large"
    assert r.headers["access-control-allow-origin"] == "https://app.example"

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(MAX_JSON_BODY_BYTES // (1 << 20) + 1):
            yield b"x" * (1 << 20)

    r = client.post("/fal-ai/ovi", content=chunks(), headers={**AUTH, **origin})
    assert r.status_code == 413
    assert store_of(app).counts() == {"IN_QUEUE": 0, "IN_PROGRESS": 0}
    ok = client.post("/queue/fal-ai/ovi", json={"prompt": "x" * 1000}, headers=AUTH)
    assert ok.status_code == 200


def test_queue_host_rewrite_tolerates_missing_raw_path() -> None:
    # raw_path is optional in ASGI (None or absent): the rewrite must not turn that into a 500
    seen: list[tuple[str, bytes]] = []

    async def inner(scope, receive, send) -> None:
        seen.append((scope["path"], scope.get("raw_path")))

    for extra in ({"raw_path": None}, {}):
        scope = {"type": "http", "path": "/fal-ai/ovi", "headers": [(b"host", b"queue.x")]}
        asyncio.run(QueueHostMiddleware(inner)({**scope, **extra}, None, None))
    upload = {"type": "http", "path": "/files/upload", "headers": [(b"host", b"queue.x")]}
    asyncio.run(QueueHostMiddleware(inner)(upload, None, None))  # fal's CDN path stays put
    assert seen == [
        ("/queue/fal-ai/ovi", b"/queue/fal-ai/ovi"),
        ("/queue/fal-ai/ovi", b"/queue/fal-ai/ovi"),
        ("/files/upload", None),
    ]


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
        "/health",
    ):
        assert path in paths, path
    body = paths["/queue/fal-ai/ovi/image-to-video"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/OviImageToVideoInput")
    assert "apiKeyAuth" in doc["components"]["securitySchemes"]
    assert "429" in paths["/queue/fal-ai/ovi"]["post"]["responses"]


def test_unhandled_errors_are_500_with_fal_shape(
    app_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = app_client

    def explode(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_of(app), "counts", explode)
    r = client.get("/health")
    assert r.status_code == 500
    assert r.json() == {"detail": "Internal server error", "error_type": "internal_error"}


class RecordingDispatcher:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def enqueue(self, url: str, **kw: Any) -> int:
        self.sent.append({"url": url, **kw})
        return len(self.sent)

    def stop(self, timeout: float = 5.0) -> None:
        pass

    def jwks(self) -> dict:
        return {"keys": []}


def test_webhooks_are_pumped_once_per_completion(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with running_app(settings) as (client, app):
        app.state.webhooks.stop()
        recorder = app.state.webhooks = RecordingDispatcher()
        hook = "https://hooks.example.com/ovi"
        ok = client.post(
            f"/queue/fal-ai/ovi?fal_webhook={hook}", json={"prompt": "x"}, headers=AUTH
        )
        assert ok.status_code == 200 and ok.json()["gateway_request_id"]
        bad = client.post(
            f"/queue/fal-ai/ovi?fal_webhook={hook}", json={"prompt": "y"}, headers=AUTH
        )
        store = store_of(app)
        finish_next(store)
        finish_next(store, error=JobError("Generation failed: x", "runner_server_error", 500))
        maintenance = Maintenance(app, settings)
        maintenance.tick()
        maintenance.tick()
        assert len(recorder.sent) == 2
        first, second = recorder.sent
        assert first["url"] == hook and first["request_id"] == ok.json()["request_id"]
        assert first["gateway_request_id"] == ok.json()["gateway_request_id"]
        assert first["status"] == "OK"
        assert first["payload"]["video"]["url"] == "http://testserver" + RESULT["video"]["url"]
        assert second["request_id"] == bad.json()["request_id"] and second["status"] == "ERROR"
        assert second["payload"] == {
            "detail": "Generation failed: x",
            "error_type": "runner_server_error",
        }
        refused = client.post(
            "/queue/fal-ai/ovi?fal_webhook=http://127.0.0.1:9/hook",
            json={"prompt": "x"},
            headers=AUTH,
        )
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_maintenance_recovers_stale_workers_and_sweeps(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_stale_after_s=5, output_retention_s=60)
    with running_app(settings) as (_, app):
        store = store_of(app)
        job = store.submit(NewJob(app="fal-ai/ovi", input={"prompt": "x"}))
        store.heartbeat(WorkerInfo(id="remote-1", state="ready", heartbeat_at=time.time() - 10))
        store.claim("remote-1")
        old = app.state.storage.save(
            b"x", content_type="video/mp4", file_name="a.mp4", kind="outputs"
        )
        os.utime(old.path, (time.time() - 120, time.time() - 120))
        Maintenance(app, settings).tick()
        back = store.get(job.id)
        assert back.status is JobStatus.IN_QUEUE and back.attempts == 1
        assert store.workers() == []
        assert not old.path.exists()
