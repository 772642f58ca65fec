"""Stored outputs and uploads, served with Range support (`/files/{kind}/{id}/{name}`).

No API key: a file URL is a capability (128 random bits in its path), like fal's CDN URLs, so
browsers and players can fetch it directly. Files expire after `output_retention_s`.
"""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from server.deps import SettingsDep, StorageDep

router = APIRouter(tags=["files"])

# Uploads are arbitrary client bytes: never let a browser run them in our origin.
_SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; media-src 'self'; sandbox",
}


@router.head("/files/{kind}/{file_id}/{name}", include_in_schema=False, response_model=None)
@router.get(
    "/files/{kind}/{file_id}/{name}",
    response_class=FileResponse,
    response_model=None,
    responses={
        200: {"content": {"video/mp4": {}, "application/octet-stream": {}}},
        206: {"description": "Partial content (Range request)."},
        404: {"description": "No such file (or it expired)."},
    },
    summary="Download a stored file",
)
def get_file(
    kind: str, file_id: str, name: str, storage: StorageDep, settings: SettingsDep
) -> FileResponse | JSONResponse:
    """The file's bytes; `Range: bytes=a-b` answers 206 with that slice."""
    try:
        path = storage.resolve(f"/{kind}/{file_id}/{name}")
    except FileNotFoundError:
        return JSONResponse({"detail": "File not found"}, status_code=404)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    max_age = int(settings.output_retention_s)
    return FileResponse(
        path,
        media_type=media_type,
        headers={**_SAFE_HEADERS, "Cache-Control": f"private, max-age={max_age}"},
    )
