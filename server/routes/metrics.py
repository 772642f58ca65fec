"""`GET /metrics`: the Prometheus exposition (`server.metrics`), behind the API key like the API
(Prometheus sends it with `authorization: {type: Key, credentials: ...}`; see the README)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import require_api_key
from server.schemas import RequestError

router = APIRouter(tags=["monitoring"], dependencies=[Depends(require_api_key)])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text exposition"},
        401: {"model": RequestError, "description": "Missing or invalid API key."},
    },
)
def metrics(request: Request) -> Response:
    """Requests, queue depth per priority, running jobs, workers by state, per-phase durations,
    DiT steps/s, GPU memory per worker, webhook deliveries, storage bytes."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
