"""The API's ASGI middleware: fal's queue hosts at the root, a body-size cap, a body read
timeout, the headers every error answer carries, and CORS that admits fal's `x-fal-*` headers.
`add_middleware(app, settings)` installs them in order."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import RequestTooLargeError, error_response
from server.fal_hosts import host_role
from server.settings import ServerSettings

# Paths that stay at the root on a `queue.` host (everything else gets the /queue prefix).
_ROOT_PATHS = (
    "/health",
    "/files/",
    "/files/upload",  # fal-client's CDN upload: POST {CDN}/files/upload
    "/storage/",
    "/docs",
    "/redoc",
    "/openapi",
    "/api/",
    "/.well",
)


class QueueHostMiddleware:
    """Route by `Host`: the queue API at the root for fal's queue hosts (`server.fal_hosts`) and
    any host starting with `queue.`, like queue.fal.run: `POST /fal-ai/ovi` there is
    `POST /queue/fal-ai/ovi` here. fal's other hosts (fal.run, rest.fal.ai, v3.fal.media) are
    served by the routes at the root as they are."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            path: str = scope["path"]
            if (
                (host.lower().startswith("queue.") or host_role(host) == "queue")
                and not path.startswith("/queue/")
                and not path.startswith(_ROOT_PATHS)
            ):
                scope = dict(scope)
                scope["path"] = "/queue" + path
                scope["raw_path"] = b"/queue" + (scope.get("raw_path") or path.encode())
                scope["ovi.queue_host"] = True
        await self.app(scope, receive, send)


# Largest JSON body: a 10 MiB data URI percent-encoded (up to 3x) plus the prompts. Bodies are
# read before the API key is checked, so without a cap anyone could make us buffer gigabytes.
MAX_JSON_BODY_BYTES = 32 * 1024 * 1024
TOO_LARGE = f"Request body larger than {MAX_JSON_BODY_BYTES} bytes"
# Upload routes stream their bodies against `upload_max_bytes` themselves.
_UPLOAD_PATHS = ("/storage/upload/put/", "/files/upload")


class BodyLimitMiddleware:
    """413 for request bodies over `MAX_JSON_BODY_BYTES` (declared or streamed), except uploads."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(RequestTooLargeError(TOO_LARGE))
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # chunked: FastAPI re-raises HTTPException as is
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, counting_receive, send)


class BodyTimeoutMiddleware:
    """408 when a request body stalls: each piece of it must arrive within `timeout_s` (a client
    that declares `Content-Length: 1000` and sends 15 bytes no longer holds a connection for
    ever), and the whole body within `timeout_s` plus its size at `MIN_BODY_RATE` (a client that
    drips a byte every few seconds is cut off too; any link faster than that rate is never).
    Once the body is complete, `receive` is passed through untouched (streaming answers wait on
    it for the disconnect)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        started: float | None = None  # the first read (time the app takes before it is not counted)
        received = 0

        async def timed_receive() -> Message:
            nonlocal body_done, received, started
            if body_done:
                return await receive()
            if started is None:
                started = time.monotonic()
            allowed = started + self.timeout_s + received / MIN_BODY_RATE - time.monotonic()
            try:
                if allowed <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), min(self.timeout_s, allowed))
            except asyncio.TimeoutError:  # FastAPI re-raises HTTPException as is
                if allowed < self.timeout_s:
                    detail = BODY_TOO_SLOW.format(MIN_BODY_RATE // 1024, self.timeout_s)
                else:
                    detail = BODY_TIMEOUT.format(self.timeout_s)
                raise HTTPException(408, detail, headers={"Connection": "close"}) from None
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


BODY_TIMEOUT = "Request body not received in time: no data for {:g} s"
BODY_TOO_SLOW = "Request body too slow: under {} KiB/s after the first {:g} s"
# The slowest body upload accepted past `body_read_timeout_s` (bytes per second).
MIN_BODY_RATE = 16 * 1024
_REQUEST_ID_IN_PATH = re.compile(r"/requests/([^/]+)")


class FalHeadersMiddleware:
    """Headers every error answer carries, whoever wrote it (a route, FastAPI, Starlette):
    `x-fal-request-id` (the id in the path, else a fresh one) and, on 429 and 503,
    `Retry-After`, so clients back off instead of hammering."""

    def __init__(self, app: ASGIApp, retry_after_s: int) -> None:
        self.app = app
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-fal-request-id" not in names:
                    found = _REQUEST_ID_IN_PATH.search(scope.get("path", ""))
                    request_id = found.group(1) if found else str(uuid.uuid4())
                    headers.append((b"x-fal-request-id", request_id.encode("latin-1", "replace")))
                if message["status"] in (429, 503) and b"retry-after" not in names:
                    headers.append((b"retry-after", self.retry_after))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class FalCORSMiddleware(CORSMiddleware):
    """CORS that also allows any `x-fal-*` request header (fal's clients add new ones)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        requested = request_headers.get("access-control-request-headers")
        if not requested:
            return super().preflight_response(request_headers)
        names = [h.strip().lower() for h in requested.split(",") if h.strip()]
        fal = [h for h in names if h.startswith("x-fal-")]
        others = [h for h in names if not h.startswith("x-fal-")]
        raw = [(k, v) for k, v in request_headers.raw if k != b"access-control-request-headers"]
        if others:
            raw.append((b"access-control-request-headers", ", ".join(others).encode()))
        response = super().preflight_response(Headers(raw=raw))
        if response.status_code == 200 and fal:
            allowed = response.headers.get("access-control-allow-headers", "")
            response.headers["Access-Control-Allow-Headers"] = ", ".join(
                [h for h in (allowed, *fal) if h]
            )
        return response


CORS_ALLOW_HEADERS = ["authorization", "content-type", "accept", "x-fal-target-url"]
CORS_EXPOSE_HEADERS = [
    "x-fal-request-id",
    "x-fal-error-type",
    "x-fal-request-timeout-type",
    "retry-after",
]


def add_middleware(app: FastAPI, settings: ServerSettings) -> None:
    """Install the middleware, innermost first: the body cap inside CORS (so browsers can read
    its 413), the queue-host rewrite outermost."""
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_read_timeout_s)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(FalHeadersMiddleware, retry_after_s=settings.retry_after_s)
    app.add_middleware(
        FalCORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"],
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
    )
    app.add_middleware(QueueHostMiddleware)
