"""`create_app(settings)`: the FastAPI app, its lifespan, routers, the error handler, middleware.

The lifespan opens the job store (`settings.job_store_url`) and the storage
(`settings.storage_url`), makes the request service, starts the webhook dispatcher, the worker
supervisor (when `settings.workers > 0`) and the maintenance loop, and closes them in reverse.
Routes only reach the store and the storage through `server.serving`; torch never loads here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.errors import FalError, error_response
from server.fetch import ImageInputError
from server.jobs import JobStore, JobStoreError, open_store
from server.maintenance import Maintenance
from server.metrics import ApiMetrics, MetricsMiddleware
from server.middleware import add_middleware
from server.openai_api import router as openai_videos
from server.openai_api.serving import VideoService
from server.readiness import Faults
from server.routes import files, health, playground, queue, sync, webhooks
from server.routes import metrics as metrics_route
from server.routes import storage as uploads
from server.schemas import RequestError
from server.serving import Serving
from server.settings import ServerSettings, get_settings
from server.storage import Storage, open_storage
from server.supervisor import WorkerSupervisor
from server.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)

API_DESCRIPTION = """\
Self-hosted, fal-compatible API for Ovi (audio + video generation).

Point fal's clients at this server: `FAL_RUN_HOST=<host:port>`,
`FAL_QUEUE_RUN_HOST=<host:port>/queue`, `FAL_KEY=<key>` (and `SSL_CERT_FILE` for a local CA).
Apps: `fal-ai/ovi` (text-to-video) and `fal-ai/ovi/image-to-video`. Send
`Authorization: Key <key>`. The same queue also answers OpenAI-style at `/v1/videos`
(`Authorization: Bearer <key>`); Prometheus metrics at `/metrics`.
"""

# What any route may answer besides its own (every error answer carries `error_type` and
# `x-fal-request-id`).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    500: {"model": RequestError, "description": "Unexpected server error (logged)."},
}

# Everything a request may raise that is answered on purpose; the rest is a logged 500.
REFUSALS: tuple[type[Exception], ...] = (
    FalError,
    JobStoreError,
    ImageInputError,
    RequestValidationError,
    HTTPException,
)


async def _refusal(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(exc)


def create_app(
    settings: ServerSettings | None = None,
    *,
    store: JobStore | None = None,
    storage: Storage | None = None,
) -> FastAPI:
    """Build the app. `settings` default to `get_settings()` (env + config file); `store` and
    `storage` default to the ones the settings' URLs name (and are closed with the app only
    then). `settings.workers` worker processes start with the app (0: none; workers run
    elsewhere, e.g. `ovi worker`, sharing the two URLs)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.store = store or await to_thread.run_sync(open_store, settings.job_store_url)
        app.state.storage = storage or await to_thread.run_sync(open_storage, settings.storage_url)
        app.state.faults = Faults()
        app.state.metrics = ApiMetrics(app.state.store)
        app.state.storage.on_save = app.state.metrics.stored
        app.state.serving = Serving(
            settings, app.state.store, app.state.storage, faults=app.state.faults
        )
        app.state.videos = VideoService(app.state.serving)
        app.state.webhooks = WebhookDispatcher.from_settings(settings, app.state.store)
        app.state.webhooks.observer = app.state.metrics.webhook_attempt
        app.state.webhooks.start()
        app.state.supervisor = None
        if settings.workers > 0:
            app.state.supervisor = WorkerSupervisor(settings, app.state.store)
            await to_thread.run_sync(app.state.supervisor.start)
            app.state.serving.supervisor = app.state.supervisor
        maintenance = Maintenance(
            settings,
            app.state.store,
            app.state.storage,
            webhooks=app.state.webhooks,
            supervisor=app.state.supervisor,
            faults=app.state.faults,
        )
        task = asyncio.create_task(maintenance.run(), name="ovi-maintenance")
        app.state.maintenance = maintenance
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if app.state.supervisor is not None:
                await to_thread.run_sync(app.state.supervisor.stop)
            try:  # webhooks due now go out before the stop (the outbox keeps the rest)
                await to_thread.run_sync(maintenance.pump_webhooks)
            except Exception as exc:  # e.g. the job store is unreachable at shutdown
                log.warning("final webhook pump skipped: %s: %s", type(exc).__name__, exc)
            await to_thread.run_sync(app.state.webhooks.stop)
            if storage is None:
                app.state.storage.close()
            if store is None:
                app.state.store.close()

    app = FastAPI(
        title="ovi-server",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings

    for refusal in REFUSALS:
        app.add_exception_handler(refusal, _refusal)
    app.add_exception_handler(Exception, _unexpected)

    routers: list[Any] = [
        health.router,
        files.router,
        queue.router,
        queue.openapi_router,
        sync.router,
        uploads.router,
        webhooks.router,
        metrics_route.router,
        openai_videos.router,
    ]
    for router in routers:
        app.include_router(router, responses=COMMON_RESPONSES)
    app.include_router(playground.router)
    app.mount(playground.PATH, playground.static_files(), name="playground")
    # Innermost: it reads the matched route from the scope the router fills in.
    app.add_middleware(MetricsMiddleware, metrics=lambda: getattr(app.state, "metrics", None))
    add_middleware(app, settings)
    return app
