"""The browser playground: static HTML/CSS/JS (`server/static/playground/`) at `/playground/`,
and `/` redirecting there.

The page builds its form from `/openapi.json` (every field of both input models, and the
submit route's query and header options) and talks to the public queue API like any client,
with the key the user types: it has no route or privilege of its own.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "playground"
PATH = "/playground"

router = APIRouter(tags=["playground"], include_in_schema=False)


@router.get("/")
@router.get(PATH)
async def to_playground() -> RedirectResponse:
    """The playground's page (its relative asset URLs need the trailing slash)."""
    return RedirectResponse(PATH + "/", status_code=307)


def static_files() -> StaticFiles:
    """The page and its assets, served with ETag / Last-Modified."""
    return StaticFiles(directory=STATIC_DIR, html=True)
