"""server/middleware.py: CORS for fal's headers, the body cap, the `queue.` host at the root."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _app import AUTH, make_settings, running_app, store_of

from server.middleware import MAX_JSON_BODY_BYTES, QueueHostMiddleware


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


def test_each_fal_host_reaches_its_part_of_the_api(app_client) -> None:
    """With fal's own names pointed at the server (docs/drop-in.md §0), each Host routes where
    the released clients expect: queue hosts at the root, the others as they are."""
    from server.fal_hosts import FAL_HOSTS, host_role

    client, app = app_client
    for host, role in FAL_HOSTS.items():
        headers = {**AUTH, "host": host}
        if role == "queue":
            r = client.post("/fal-ai/ovi", json={"prompt": "x"}, headers=headers)
            assert r.status_code == 200, (host, r.text)
            assert r.json()["status_url"].startswith(f"http://{host}/fal-ai/ovi/requests/")
            status = client.get(r.json()["status_url"].split(host, 1)[1], headers=headers)
            assert status.status_code == 202, host
        elif role in ("rest", "cdn"):
            r = client.post("/storage/auth/token", json={}, headers=headers)
            assert r.status_code == 200 and r.json()["base_url"] == f"http://{host}", host
        else:  # run: the sync route answers there (a 422 for a bad body, not a 404)
            r = client.post("/fal-ai/ovi", json={}, headers=headers)
            assert r.status_code == 422, (host, r.text)
    assert host_role("QUEUE.FAL.RUN:443") == "queue" and host_role("example.com") is None
