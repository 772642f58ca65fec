"""What only the Redis store has (the shared behaviour is `tests/contract`): its URL, a server
that goes away and comes back (AOF: nothing lost; the API answers 503 + Retry-After meanwhile,
never a hang or a 500), the worker riding out the restart, and two API replicas sharing the
webhook outbox."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from _app import AUTH, finish_next, make_settings, running_app
from _loopback_http import LoopbackServer, Reply

from server.jobs import NewJob, Outcome, StoreUnavailableError, check_store_url, open_store
from server.jobs.redis import RedisJobStore, parse_redis_url
from server.main import create_app
from server.settings import ServerSettings
from server.webhooks import verify_webhook
from tools.services import RedisServer

pytestmark = pytest.mark.skipif(not RedisServer.available(), reason="no redis-server")


@pytest.fixture()
def own_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_urls() -> None:
    assert parse_redis_url("redis://127.0.0.1:6379/0") == ("redis://127.0.0.1:6379/0", "ovi:")
    assert parse_redis_url("redis://h:1/2?prefix=a:")[1] == "a:"
    for bad in ("redis://h/0", "redis://:1/0", "redis://h:1/x", "redis://h:1/0?db=3"):
        with pytest.raises(ValueError):
            check_store_url(bad)
    assert ServerSettings(job_store="redis://10.0.0.5:6379/0").job_store_url.startswith("redis")
    with pytest.raises(ValueError, match="redis://HOST:PORT/DB"):
        ServerSettings(job_store="redis://10.0.0.5/0")


def test_restart_loses_nothing_and_outage_is_a_clear_error(own_redis: RedisServer) -> None:
    store = open_store(own_redis.url, retry_s=0.5)
    worker = open_store(own_redis.url, retry_s=10)
    try:
        a = store.submit(NewJob(app="fal-ai/ovi", input={"prompt": "a"}))
        b = store.submit(NewJob(app="fal-ai/ovi", input={"prompt": "b"}, priority="low"))
        assert worker.claim("w").id == a.id
        own_redis.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.get(a.id)
        assert time.monotonic() - started < 5  # bounded: retried about retry_s, then refused
        own_redis.start()
        # The same connections carry on; the AOF kept the queue and the running job.
        assert store.queue_position(b.id) == 0
        assert worker.complete(a.id, "w", Outcome(result={"ok": 1}))
        assert store.get(a.id).result == {"ok": 1}
        # A worker's call during a short restart waits for the server instead of failing.
        own_redis.stop()
        threading.Timer(1.0, own_redis.start).start()
        assert worker.claim("w").id == b.id
    finally:
        store.close()
        worker.close()


def test_api_answers_503_with_retry_after_while_redis_is_down(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    store = RedisJobStore(own_redis.url, retry_s=0.3)
    settings = make_settings(tmp_path / "data", job_store=own_redis.url)
    app = create_app(settings, store=store)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.post("/queue/fal-ai/ovi", json={"prompt": "hi"}, headers=AUTH)
            assert r.status_code == 200, r.text
            status_url = r.json()["status_url"]
            own_redis.stop()
            for call in (
                lambda: client.get(status_url, headers=AUTH),
                lambda: client.post("/queue/fal-ai/ovi", json={"prompt": "x"}, headers=AUTH),
            ):
                r = call()
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "1"
                assert r.json()["error_type"] == "service_unavailable"
            r = client.get("/health", headers=AUTH)  # `failed`, with the reason
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            assert r.json()["status"] == "failed"
            assert "job store unavailable" in r.json()["reasons"][0]
            own_redis.start()
            r = client.get(status_url, headers=AUTH)
            assert r.status_code in (200, 202) and r.json()["status"] == "IN_QUEUE"
    finally:
        store.close()


def test_two_replicas_deliver_each_webhook_once(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two API apps on one Redis store (each with its maintenance loop and dispatcher) and one
    shared data dir (the signing key): every webhook arrives exactly once, and verifies."""
    url = f"{redis_server.url}?prefix=hooks{time.time_ns()}:"
    settings = make_settings(tmp_path / "shared", job_store=url, url_allowlist=["127.0.0.1"])
    with LoopbackServer() as receiver, contextlib.ExitStack() as stack:
        receiver.routes["/hook"] = lambda req: Reply(200)
        apps = [stack.enter_context(running_app(settings)) for _ in range(2)]
        hook = urllib.parse.quote(receiver.base + "/hook", safe="")
        ids = []
        for n in range(10):
            client = apps[n % 2][0]
            r = client.post(f"/queue/fal-ai/ovi?fal_webhook={hook}", json={"prompt": f"{n}"},
                            headers=AUTH)  # fmt: skip
            assert r.status_code == 200, r.text
            ids.append(r.json()["request_id"])
        store = apps[0][1].state.store
        for _ in ids:
            finish_next(store)
        deadline = time.monotonic() + 20
        while len(receiver.received) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # a second delivery would come within a maintenance tick or two
        jwks = apps[1][0].get("/.well-known/jwks.json").json()
    got = [json.loads(r.body)["request_id"] for r in receiver.received]
    assert sorted(got) == sorted(ids)  # each exactly once
    for delivered in receiver.received:
        verify_webhook(delivered.headers, delivered.body, jwks)  # either replica's key
