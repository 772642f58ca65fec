"""server/webhooks.py: delivery to a real loopback receiver, retries, signatures, durability."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from _loopback_http import LoopbackServer, Received, Reply
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.fetch import UrlPolicy
from server.jobs import SqliteJobStore
from server.settings import ServerSettings
from server.webhooks import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    RetrySchedule,
    WebhookDispatcher,
    WebhookVerificationError,
    build_body,
    check_webhook_url,
    jwks,
    load_or_create_signing_key,
    sign_webhook,
    verify_webhook,
)

ALLOW_LOOPBACK = UrlPolicy.from_entries(["127.0.0.1"])
FAST = RetrySchedule(max_attempts=3, initial_delay_s=0.05, max_delay_s=0.2)


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def outbox(tmp_path) -> Iterator[SqliteJobStore]:
    """The job store whose outbox the dispatchers use."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield store
    store.close()


def _dispatcher(key, store, policy=ALLOW_LOOPBACK, schedule=FAST) -> WebhookDispatcher:
    return WebhookDispatcher(
        signing_key=key, policy=policy, store=store, schedule=schedule, timeout_s=2
    )


@contextmanager
def sending(key, store, route: Callable[[Received], Reply], policy=ALLOW_LOOPBACK):
    """A receiver answering with `route` at /hook and a started dispatcher; both stop after."""
    with LoopbackServer() as receiver:
        receiver.routes["/hook"] = route
        dispatcher = _dispatcher(key, store, policy)
        dispatcher.start()
        try:
            yield dispatcher, receiver
        finally:
            dispatcher.close()


def test_delivery_is_signed_and_verifies(key, outbox):
    payload = {"video": {"url": "http://x/files/outputs/a/v.mp4"}, "seed": 7}
    with sending(key, outbox, lambda req: Reply(200, b"ok")) as (dispatcher, receiver):
        dispatcher.enqueue(
            receiver.base + "/hook", request_id="req-1", status="OK", payload=payload, user_id="u1"
        )
        _wait_for(lambda: len(receiver.received) == 1)
        _wait_for(lambda: dispatcher.counts() == {})
    got = receiver.received[0]
    assert got.method == "POST" and got.headers["Content-Type"] == "application/json"
    assert got.headers["Host"] == f"127.0.0.1:{receiver.port}"
    body = json.loads(got.body)
    assert body == {
        "request_id": "req-1",
        "gateway_request_id": "req-1",
        "status": "OK",
        "payload": payload,
        "error": None,
        "payload_error": None,
    }
    assert got.headers["X-Fal-Webhook-Request-Id"] == "req-1"
    assert got.headers["X-Fal-Webhook-User-Id"] == "u1"
    # the published JWKS verifies it; a tampered body or another key does not
    published = jwks(key.public_key())
    verify_webhook(got.headers, got.body, published)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(got.headers, got.body.replace(b"req-1", b"req-2"), published)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(got.headers, got.body, Ed25519PrivateKey.generate().public_key())


def test_retries_after_failures_then_succeeds(key, outbox):
    answers = iter([500, 503, 200])
    results: list[str] = []  # what the metrics hear (server.metrics: ovi_webhook_deliveries)
    with sending(key, outbox, lambda req: Reply(next(answers))) as (dispatcher, receiver):
        dispatcher.observer = results.append
        start = time.monotonic()
        dispatcher.enqueue(
            receiver.base + "/hook",
            request_id="r",
            status="ERROR",
            payload={"detail": "boom", "error_type": "internal_error"},
            error="Invalid status code: 500",
        )
        _wait_for(lambda: len(receiver.received) == 3)
        elapsed = time.monotonic() - start
        _wait_for(lambda: dispatcher.counts() == {})
        _wait_for(lambda: results == ["retry", "retry", "delivered"])
    assert elapsed >= 0.05 + 0.1 - 0.02  # backoff: 0.05 s then 0.1 s
    bodies = {r.body for r in receiver.received}
    assert len(bodies) == 1  # the same body every attempt
    for r in receiver.received:
        verify_webhook(r.headers, r.body, key.public_key())
    assert json.loads(r.body)["error"] == "Invalid status code: 500"


def test_gives_up_after_max_attempts(key, outbox):
    results: list[str] = []
    with sending(key, outbox, lambda req: Reply(500)) as (dispatcher, receiver):
        dispatcher.observer = results.append
        dispatcher.enqueue(receiver.base + "/hook", request_id="r", status="OK", payload={})
        _wait_for(lambda: dispatcher.counts() == {"failed": 1})
        _wait_for(lambda: len(results) == FAST.max_attempts)
    assert len(receiver.received) == FAST.max_attempts
    assert results == ["retry"] * (FAST.max_attempts - 1) + ["failed"]


def test_pending_delivery_survives_restart(key, tmp_path):
    with LoopbackServer() as receiver:
        receiver.routes["/hook"] = lambda req: Reply(204)
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        first = _dispatcher(key, store)  # never started: the process "died" before sending
        first.enqueue(receiver.base + "/hook", request_id="r", status="OK", payload={"a": 1})
        first.close()
        store.close()
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        second = _dispatcher(key, store)
        second.start()
        try:
            _wait_for(lambda: len(receiver.received) == 1)
            _wait_for(lambda: second.counts() == {})
        finally:
            second.close()
            store.close()


def test_two_dispatchers_on_one_store_send_each_delivery_once(key, outbox, tmp_path):
    other = SqliteJobStore(tmp_path / "jobs.sqlite3")
    with sending(key, outbox, lambda req: Reply(200)) as (dispatcher, receiver):
        second = _dispatcher(key, other)
        second.start()
        try:
            for i in range(8):
                (dispatcher if i % 2 else second).enqueue(
                    receiver.base + "/hook", request_id=f"r{i}", status="OK", payload={}
                )
            _wait_for(lambda: dispatcher.counts() == {} and len(receiver.received) == 8)
        finally:
            second.close()
            other.close()
    ids = sorted(r.headers["X-Fal-Webhook-Request-Id"] for r in receiver.received)
    assert ids == [f"r{i}" for i in range(8)]


def test_enqueue_does_not_wait_for_a_slow_receiver(key, outbox):
    slow = lambda req: Reply(200, b"ok", delay_s=1.0)  # noqa: E731
    with sending(key, outbox, slow) as (dispatcher, receiver):
        t0 = time.monotonic()
        for i in range(3):
            dispatcher.enqueue(receiver.base + "/hook", request_id=f"r{i}", status="OK", payload={})
        assert time.monotonic() - t0 < 0.9  # one send waited for would alone take 1 s
        _wait_for(lambda: dispatcher.counts() == {})


def test_private_url_is_refused_without_allowlist(key, outbox):
    with sending(key, outbox, lambda req: Reply(200), UrlPolicy()) as (dispatcher, receiver):
        dispatcher.enqueue(receiver.base + "/hook", request_id="r", status="OK", payload={})
        _wait_for(lambda: dispatcher.counts() == {"failed": 1})
    assert receiver.received == []
    with pytest.raises(ValueError, match="loopback"):
        check_webhook_url("http://127.0.0.1:9/x", UrlPolicy())
    with pytest.raises(ValueError, match="metadata"):
        check_webhook_url("http://169.254.169.254/latest", UrlPolicy())
    with pytest.raises(ValueError, match="scheme"):
        check_webhook_url("file:///etc/passwd", UrlPolicy())
    check_webhook_url("http://127.0.0.1:9/x", ALLOW_LOOPBACK)
    check_webhook_url("https://example.com/hook", UrlPolicy())  # no DNS unless asked


def test_verify_rejects_stale_and_malformed(key):
    body = b'{"a":1}'
    headers = sign_webhook(key, request_id="r", user_id="u", body=body, timestamp=1_000_000)
    verify_webhook(headers, body, key.public_key(), now=1_000_100)
    with pytest.raises(WebhookVerificationError, match="window"):
        verify_webhook(headers, body, key.public_key(), now=1_000_000 + 301)
    with pytest.raises(WebhookVerificationError, match="missing header"):
        verify_webhook(
            {k: v for k, v in headers.items() if k != HEADER_SIGNATURE}, body, key.public_key()
        )
    with pytest.raises(WebhookVerificationError, match="not hex"):
        verify_webhook({**headers, HEADER_SIGNATURE: "zz"}, body, key.public_key(), now=1_000_000)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(
            {**headers, HEADER_TIMESTAMP: "1000001"}, body, key.public_key(), now=1_000_000
        )
    lower = {k.lower(): v for k, v in headers.items()}
    verify_webhook(lower, body, key.public_key(), now=1_000_000)


def test_unserialisable_payload_becomes_payload_error():
    body = json.loads(
        build_body(
            request_id="r", gateway_request_id=None, status="OK", payload={"x": {1, 2}}, error=None
        )
    )
    assert body["payload"] is None and "not valid JSON" in body["payload_error"]


def test_key_persists_in_data_dir(tmp_path, outbox):
    settings = ServerSettings(
        data_dir=tmp_path, url_allowlist=["127.0.0.1"], webhook_initial_delay_s=1
    )
    a = WebhookDispatcher.from_settings(settings, outbox)
    b = WebhookDispatcher.from_settings(settings, outbox)
    try:
        assert a.jwks() == b.jwks()
        assert a.jwks()["keys"][0]["crv"] == "Ed25519"
        assert a.schedule.initial_delay_s == 1 and a.schedule.max_attempts == 10
    finally:
        a.close()
        b.close()
    key_file = tmp_path / "webhook-ed25519.pem"
    assert key_file.stat().st_mode & 0o077 == 0
    assert load_or_create_signing_key(key_file).public_key() == a.public_key


def test_default_schedule_spans_about_two_hours():
    s = RetrySchedule()
    total = sum(s.delay_after(n) for n in range(1, s.max_attempts))
    assert s.max_attempts == 10 and 1.5 * 3600 < total < 2.5 * 3600


def test_through_the_app_to_a_real_receiver(tmp_path):
    """Submit with ?fal_webhook, complete the job, and verify the delivery with the app's JWKS."""
    from _app import AUTH, finish_next, make_settings, running_app, store_of

    settings = make_settings(
        tmp_path, url_allowlist=["127.0.0.1"], webhook_initial_delay_s=0.05, webhook_max_attempts=3
    )
    with LoopbackServer() as receiver:
        answers = iter([502, 200])
        receiver.routes["/hook"] = lambda req: Reply(next(answers))
        with running_app(settings) as (client, app):
            hook = urllib.parse.quote(receiver.base + "/hook", safe="")
            submitted = client.post(
                f"/queue/fal-ai/ovi?fal_webhook={hook}", json={"prompt": "x"}, headers=AUTH
            )
            assert submitted.status_code == 200, submitted.text
            finish_next(store_of(app))
            _wait_for(lambda: len(receiver.received) == 2)  # maintenance pumps within ~1 s
            published = client.get("/.well-known/jwks.json").json()
    delivered = receiver.received[-1]
    verify_webhook(delivered.headers, delivered.body, published)
    body = json.loads(delivered.body)
    assert body["request_id"] == submitted.json()["request_id"]
    assert body["gateway_request_id"] == submitted.json()["gateway_request_id"]
    assert body["status"] == "OK" and body["payload"]["seed"] == 7
    assert body["payload"]["video"]["url"].startswith("http://testserver/files/outputs/")
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivered.headers, delivered.body.replace(b'"OK"', b'"ERROR"'), published)
