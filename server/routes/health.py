"""`GET /health`: `ready`, `degraded` (why), `warming` or `failed` (why), decided by
`server.readiness.assess`; `GET /workers`: the whole fleet (every worker any machine registered
in the shared job store) and the queue.

Without a valid key `/health` says only the state and the queue sizes (a load balancer's probe);
with one it also lists the model, the reasons and the workers (hosts, pids, job ids).
"""

from __future__ import annotations

import time
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.deps import AuthDep, OptionalCallerDep, SettingsDep, StoreDep, public_health
from server.jobs.base import JobStore
from server.readiness import assess, health_body, is_live, queue_sizes
from server.schemas import HealthStatus, RequestError
from server.settings import ServerSettings

router = APIRouter(tags=["health"])


def fleet(store: JobStore, settings: ServerSettings) -> dict[str, Any]:
    """Every registered worker (those silent past `worker_stale_after_s` marked `live: false`)
    with its host, pid, state and job, plus the queue sizes. Blocking."""
    workers, counts = store.workers(), store.counts()
    now = time.time()
    listed = [{**w.to_dict(), "live": is_live(w, settings, now)} for w in workers]
    return {"workers": listed, "queue": queue_sizes(counts)}


@router.get(
    "/health",
    response_model=HealthStatus,
    responses={
        503: {"model": HealthStatus, "description": "`warming` or `failed`: no job can run."}
    },
    summary="Readiness",
)
async def health(
    request: Request, settings: SettingsDep, store: StoreDep, caller: OptionalCallerDep
) -> JSONResponse:
    """200 `ready` once a live worker has loaded the model, `degraded` (with `reasons`) when it
    runs but something needs attention; 503 `warming` before, `failed` (with `reasons`) when
    nothing can run jobs. Workers report by heartbeat, so remote workers count too. Without a
    valid key only the state and the queue sizes; with one also the model, the reasons and the
    workers."""
    state = request.app.state
    readiness = await to_thread.run_sync(
        lambda: assess(
            settings,
            store,
            supervisor=getattr(state, "supervisor", None),
            faults=getattr(state, "faults", None),
        )
    )
    body = health_body(settings, readiness)
    if caller is None:
        body = public_health(body)
    return JSONResponse(body, status_code=readiness.http_status)


@router.get(
    "/workers",
    summary="The worker fleet and the queue",
    responses={401: {"model": RequestError, "description": "Missing or invalid API key."}},
)
async def workers(settings: SettingsDep, store: StoreDep, _user: AuthDep) -> dict[str, Any]:
    """Every registered worker on every machine (live or silent, `live` says which; a silent
    one is recovered by the next maintenance tick), its state and job, and the queue sizes."""
    view = await to_thread.run_sync(fleet, store, settings)
    return {"model": settings.model_name, **view}
