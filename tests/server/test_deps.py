"""server/deps.py: API-key checks, absolute base URLs behind trusted proxies, submit options."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from server.deps import base_url, check_api_key, get_submit_options, key_user_id, queue_base_url
from server.errors import BadRequestError, UnauthorizedError
from server.settings import ServerSettings


def request(headers: dict[str, str], client: str = "127.0.0.1", scheme: str = "http") -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": scheme,
        "path": "/",
        "query_string": b"",
        "server": ("127.0.0.1", 8000),
        "client": (client, 5555),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def test_api_keys() -> None:
    assert check_api_key(None, []) == "local"
    assert check_api_key("Key k2", ["k1", "k2"]) == key_user_id("k2")
    assert check_api_key("key id1:secret", ["id1:secret"]) == "id1"
    for bad in (None, "", "Key", "Key k3", "Bearer k1", "k1"):
        with pytest.raises(UnauthorizedError):
            check_api_key(bad, ["k1", "k2"])


def test_base_url_from_host_and_public_setting() -> None:
    s = ServerSettings()
    assert (
        base_url(request({"host": "127.0.0.1:8443"}, scheme="https"), s) == "https://127.0.0.1:8443"
    )
    public = ServerSettings(public_base_url="https://ovi.example.com")
    assert base_url(request({"host": "x"}), public) == "https://ovi.example.com"


def test_forwarded_headers_only_from_trusted_proxies() -> None:
    fwd = {
        "host": "internal:8000",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "ovi.example.com",
    }
    untrusted = ServerSettings()
    assert base_url(request(fwd), untrusted) == "http://internal:8000"
    trusted = ServerSettings(trusted_proxies=["127.0.0.0/8"])
    assert base_url(request(fwd), trusted) == "https://ovi.example.com"
    assert base_url(request(fwd, client="10.1.2.3"), trusted) == "http://internal:8000"


def test_queue_base_url() -> None:
    s = ServerSettings()
    r = request({"host": "h:1"})
    assert queue_base_url(r, s) == "http://h:1/queue"
    r = request({"host": "queue.h:1"})
    r.scope["ovi.queue_host"] = True  # what QueueHostMiddleware sets for a `queue.` Host
    assert queue_base_url(r, s) == "http://queue.h:1"
    # URLs must work where they point: a public base (or forwarded host) that is not a
    # `queue.` host does not serve the queue at its root, so keep the /queue prefix there
    public = ServerSettings(public_base_url="https://ovi.example.com")
    assert queue_base_url(r, public) == "https://ovi.example.com/queue"
    public_queue = ServerSettings(public_base_url="https://queue.example.com")
    assert queue_base_url(r, public_queue) == "https://queue.example.com"
    trusted = ServerSettings(trusted_proxies=["127.0.0.0/8"])
    fwd = request({"host": "queue.h:1", "x-forwarded-host": "ovi.example.com"})
    fwd.scope["ovi.queue_host"] = True
    assert queue_base_url(fwd, trusted) == "http://ovi.example.com/queue"


def test_submit_options() -> None:
    def options(*args: str | None):  # an async dependency (no thread hop per request)
        return asyncio.run(get_submit_options(*args))

    opts = options("https://hook", "30.0", "LOW")
    assert (opts.webhook_url, opts.start_timeout_s, opts.priority) == ("https://hook", 30.0, "low")
    assert options(None, None, None).priority == "normal"
    for timeout, priority in (("x", None), ("-1", None), (None, "high")):
        with pytest.raises(BadRequestError):
            options(None, timeout, priority)
