"""`create_app(settings)`: the FastAPI app, its lifespan, routers, error handlers and middleware.

The lifespan opens the job store (SQLite in the data dir), the file storage and the webhook
dispatcher, starts the worker processes, and runs one maintenance loop: start deadlines, dead
workers, webhooks due, retention sweeps. Routes only touch the store; torch never loads here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import FalError
from server.fetch import ImageInputError
from server.jobs.base import JobStore
from server.jobs.sqlite import SqliteJobStore
from server.routes import files, health, queue, sync
from server.routes.queue import absolute_result, replay_status
from server.settings import ServerSettings, get_settings
from server.storage import LocalStorage

log = logging.getLogger(__name__)

API_DESCRIPTION = """\
Self-hosted, fal-compatible API for Ovi (audio + video generation).

Point fal's clients at this server: `FAL_RUN_HOST=<host:port>`,
`FAL_QUEUE_RUN_HOST=<host:port>/queue`, `FAL_KEY=<key>` (and `SSL_CERT_FILE` for a local CA).
Apps: `fal-ai/ovi` (text-to-video) and `fal-ai/ovi/image-to-video`. Send
`Authorization: Key <key>`.
"""

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
    """Serve the queue API at the root for requests whose Host starts with `queue.`, like
    queue.fal.run: `POST /fal-ai/ovi` there is `POST /queue/fal-ai/ovi` here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            path: str = scope["path"]
            if (
                host.lower().startswith("queue.")
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
# Upload routes stream their bodies against `upload_max_bytes` themselves.
_UPLOAD_PATHS = ("/storage/upload/put/", "/files/upload")


class RequestTooLargeError(FalError):
    status_code = 413
    error_type = "request_too_large"
    default_detail = f"Request body larger than {MAX_JSON_BODY_BYTES} bytes"


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
            error = RequestTooLargeError()
            await JSONResponse(error.body(), 413, headers=error.headers())(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # chunked: FastAPI re-raises HTTPException as is
                    raise HTTPException(413, RequestTooLargeError.default_detail)
            return message

        await self.app(scope, counting_receive, send)


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
CORS_EXPOSE_HEADERS = ["x-fal-request-id", "x-fal-error-type", "x-fal-request-timeout-type"]


# --- error handlers -----------------------------------------------------------------------------


async def _fal_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FalError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


async def _image_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageInputError)
    return JSONResponse(
        {"detail": [exc.to_detail()]},
        status_code=422,
        headers={"X-Fal-Error-Type": exc.type},
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        item = {
            "loc": list(error.get("loc", ())),
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        if "ctx" in error:
            item["ctx"] = {
                k: str(v) if isinstance(v, Exception) else v for k, v in error["ctx"].items()
            }
        detail.append(item)
    return JSONResponse({"detail": detail}, status_code=422)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "Internal server error", "error_type": "internal_error"},
        status_code=500,
        headers={"X-Fal-Error-Type": "internal_error"},
    )


# --- background duties --------------------------------------------------------------------------


class Maintenance:
    """The API process's periodic duties, run from one asyncio task."""

    def __init__(self, app: FastAPI, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self._last_sweep = 0.0

    @property
    def sweep_every_s(self) -> float:
        return min(3600.0, max(1.0, self.settings.output_retention_s / 10))

    def tick(self) -> None:
        store: JobStore = self.app.state.store
        store.expire_overdue()
        stale = store.stale_workers(self.settings.worker_stale_after_s)
        supervisor = self.app.state.supervisor
        if supervisor is not None:  # our own live children are never stale by our clock
            stale = [w for w in stale if w not in supervisor.alive()]
        if stale:
            recovered = store.recover(stale, max_attempts=self.settings.max_attempts)
            log.warning("workers %s stale; recovered %s", stale, recovered)
        self.pump_webhooks()
        now = time.monotonic()
        if now - self._last_sweep >= self.sweep_every_s:
            self._last_sweep = now
            retention = self.settings.output_retention_s
            removed = self.app.state.storage.sweep(retention) + store.sweep(retention)
            if removed:
                log.info("retention sweep removed %d item(s)", removed)

    def pump_webhooks(self) -> None:
        dispatcher = self.app.state.webhooks
        if dispatcher is None:
            return
        for job in self.app.state.store.take_webhooks():
            if job.error is None:
                status, payload, error = "OK", absolute_result(job.result or {}, job.base_url), None
            else:
                status = "ERROR"
                payload = {"detail": job.error.body_detail, "error_type": job.error.error_type}
                error = f"Invalid status code: {replay_status(job.error)[0]}"
            assert job.webhook_url is not None
            dispatcher.enqueue(
                job.webhook_url,
                request_id=job.id,
                status=status,
                payload=payload,
                error=error,
                gateway_request_id=job.gateway_request_id,
                user_id=job.user_id,
            )

    async def run(self) -> None:
        while True:
            try:
                await to_thread.run_sync(self.tick)
            except Exception:
                log.exception("maintenance tick failed")
            await asyncio.sleep(1.0)


def _make_webhooks(settings: ServerSettings) -> Any:
    from server.webhooks import WebhookDispatcher

    try:
        return WebhookDispatcher.from_settings(settings)
    except AttributeError as e:  # settings without the webhook block: no webhooks
        log.warning("webhooks disabled: %s", e)
        return None


# --- the app ------------------------------------------------------------------------------------


def create_app(settings: ServerSettings | None = None, *, store: JobStore | None = None) -> FastAPI:
    """Build the app. `settings` default to `get_settings()` (env + config file); `store`
    defaults to the SQLite file in the data dir. `settings.workers` worker processes start
    with the app (0: none; workers run elsewhere, e.g. `ovi worker`)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.store = store or await to_thread.run_sync(SqliteJobStore, settings.db_path)
        app.state.storage = LocalStorage(settings.files_dir)
        app.state.webhooks = _make_webhooks(settings)
        app.state.supervisor = None
        if app.state.webhooks is not None:
            app.state.webhooks.start()
        if settings.workers > 0:
            from server.worker import WorkerSupervisor

            app.state.supervisor = WorkerSupervisor(settings, app.state.store)
            await to_thread.run_sync(app.state.supervisor.start)
        maintenance = Maintenance(app, settings)
        task = asyncio.create_task(maintenance.run(), name="ovi-maintenance")
        app.state.maintenance = task
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            if app.state.supervisor is not None:
                await to_thread.run_sync(app.state.supervisor.stop)
            if app.state.webhooks is not None:
                await to_thread.run_sync(maintenance.pump_webhooks)
                await to_thread.run_sync(app.state.webhooks.stop)
            if store is None:
                app.state.store.close()

    app = FastAPI(
        title="ovi-server",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings

    app.add_exception_handler(FalError, _fal_error)
    app.add_exception_handler(ImageInputError, _image_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)

    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(queue.router)
    app.include_router(queue.openapi_router)
    app.include_router(sync.router)
    for module in ("server.routes.storage", "server.routes.webhooks"):
        router = _optional_router(module)
        if router is not None:
            app.include_router(router)

    app.add_middleware(BodyLimitMiddleware)  # inside CORS: browsers can read its 413
    app.add_middleware(
        FalCORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"],
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
    )
    app.add_middleware(QueueHostMiddleware)
    return app


def _optional_router(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module).router
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return None
