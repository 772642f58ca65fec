"""`GET /health`: `warming` until a worker has loaded the model, then `ready`; `GET /workers`:
the whole fleet (every worker any machine registered in the shared job store) and the queue.

Both read the fleet through `fleet()`, one function, so what health shows can be gated (e.g.
per tenant) in one place.
"""

from __future__ import annotations

import time
from typing import Any

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.deps import AuthDep, OptionalCallerDep, SettingsDep, StoreDep, public_health
from server.jobs.base import JobStore
from server.schemas import HealthStatus
from server.settings import ServerSettings

router = APIRouter(tags=["health"])


def fleet(store: JobStore, settings: ServerSettings, *, stale: bool = False) -> dict[str, Any]:
    """Workers (live ones; with `stale`, also those silent past `worker_stale_after_s`, marked
    `live: false`) with their host, pid, state and job, plus the queue sizes. Blocking."""
    workers, counts = store.workers(), store.counts()
    now = time.time()
    listed = []
    for w in workers:
        live = now - w.heartbeat_at < settings.worker_stale_after_s
        if live or stale:
            listed.append({**w.to_dict(), "live": live})
    return {
        "ready": any(w["live"] and w["state"] == "ready" for w in listed),
        "workers": listed,
        "queue": {
            "in_queue": counts.get("IN_QUEUE", 0),
            "in_progress": counts.get("IN_PROGRESS", 0),
        },
    }


@router.get(
    "/health",
    response_model=HealthStatus,
    responses={503: {"model": HealthStatus, "description": "No worker is ready yet."}},
    summary="Readiness",
)
async def health(settings: SettingsDep, store: StoreDep, caller: OptionalCallerDep) -> JSONResponse:
    """200 `ready` once a live worker has loaded the model; 503 `warming` before (workers
    report by heartbeat, so remote workers count too). Without a valid key only the state and
    the queue sizes; with one also the model and the workers (hosts, pids, job ids)."""
    view = await to_thread.run_sync(fleet, store, settings)
    body = {
        "status": "ready" if view["ready"] else "warming",
        "model": settings.model_name,
        "workers": [{k: v for k, v in w.items() if k != "live"} for w in view["workers"]],
        "queue": view["queue"],
    }
    if caller is None:
        body = public_health(body)
    return JSONResponse(body, status_code=200 if view["ready"] else 503)


@router.get("/workers", summary="The worker fleet and the queue")
async def workers(settings: SettingsDep, store: StoreDep, _user: AuthDep) -> dict[str, Any]:
    """Every registered worker on every machine (live or silent, `live` says which; a silent
    one is recovered by the next maintenance tick), its state and job, and the queue sizes."""
    view = await to_thread.run_sync(lambda: fleet(store, settings, stale=True))
    return {"model": settings.model_name, "workers": view["workers"], "queue": view["queue"]}
