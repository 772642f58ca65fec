"""`GET /health`: `warming` until a worker has loaded the model, then `ready`."""

from __future__ import annotations

import time

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.deps import OptionalCallerDep, SettingsDep, StoreDep, public_health
from server.schemas import HealthStatus

router = APIRouter(tags=["health"])


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

    def read() -> tuple[list, dict[str, int]]:
        return store.workers(), store.counts()

    workers, counts = await to_thread.run_sync(read)
    now = time.time()
    live = [w for w in workers if now - w.heartbeat_at < settings.worker_stale_after_s]
    ready = any(w.state == "ready" for w in live)
    body = {
        "status": "ready" if ready else "warming",
        "model": settings.model_name,
        "workers": [w.to_dict() for w in live],
        "queue": {
            "in_queue": counts.get("IN_QUEUE", 0),
            "in_progress": counts.get("IN_PROGRESS", 0),
        },
    }
    if caller is None:
        body = public_health(body)
    return JSONResponse(body, status_code=200 if ready else 503)
