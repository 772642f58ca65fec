"""`GET /health`: `ready`, `degraded` (why), `warming` or `failed` (why); see `server.readiness`."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.deps import SettingsDep, StoreDep
from server.readiness import assess, health_body
from server.schemas import HealthStatus

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthStatus,
    responses={
        503: {"model": HealthStatus, "description": "`warming` or `failed`: no job can run."}
    },
    summary="Readiness",
)
async def health(request: Request, settings: SettingsDep, store: StoreDep) -> JSONResponse:
    """200 `ready` once a live worker has loaded the model, `degraded` (with `reasons`) when it
    runs but something needs attention; 503 `warming` before, `failed` (with `reasons`) when
    nothing can run jobs. Workers report by heartbeat, so remote workers count too. Also lists
    workers and queue sizes."""
    state = request.app.state
    readiness = await to_thread.run_sync(
        lambda: assess(
            settings,
            store,
            supervisor=getattr(state, "supervisor", None),
            faults=getattr(state, "faults", None),
        )
    )
    return JSONResponse(health_body(settings, readiness), status_code=readiness.http_status)
