"""Stored outputs and uploads, served from any storage backend with Range support
(`/files/{kind}/{id}/{name}`).

No API key by default: a file URL is a capability (128 random bits in its path), like fal's CDN
URLs, so browsers and players can fetch it directly. With `files_require_key` only the owner's
key (its tag is part of the file id, `server.storage.owned_file_id`) or an admin key reads it. Files expire after `output_retention_s`. Job inputs
(kind `inputs`) are never served.
"""

from __future__ import annotations

import hashlib
import re
from email.utils import formatdate

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from server.deps import SettingsDep, StorageDep, authenticate
from server.errors import FileNotFoundHTTPError, RangeNotSatisfiableError
from server.storage import PUBLIC_KINDS, StoredFile, file_owner_tag, owner_tag

router = APIRouter(tags=["files"])

# Uploads are arbitrary client bytes: never let a browser run them in our origin.
_SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; media-src 'self'; sandbox",
}
_RANGE_RE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The `(start, end)` (end exclusive) one `Range: bytes=...` asks for, or None to answer the
    whole file: no header, a malformed one or several ranges (RFC 9110 lets a server ignore
    them). A range starting past the end raises `RangeNotSatisfiableError`."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    match = _RANGE_RE.fullmatch(spec)
    if unit.strip().lower() != "bytes" or match is None or match.group(0).strip() == "-":
        return None
    first, last = match.groups()
    if not first:  # suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiableError(size)
        return max(0, size - int(last)), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size:
        raise RangeNotSatisfiableError(size)
    if end <= start:
        return None  # last < first: malformed, ignored
    return start, end


def _validators(stored: StoredFile) -> tuple[str, str]:
    """(ETag, Last-Modified) for `If-Range`."""
    tag = hashlib.md5(f"{stored.key}-{stored.modified}-{stored.file_size}".encode()).hexdigest()
    return f'"{tag}"', formatdate(stored.modified, usegmt=True)


@router.head("/files/{kind}/{file_id}/{name}", include_in_schema=False, response_model=None)
@router.get(
    "/files/{kind}/{file_id}/{name}",
    response_class=StreamingResponse,
    response_model=None,
    responses={
        200: {"content": {"video/mp4": {}, "application/octet-stream": {}}},
        206: {"description": "Partial content (Range request)."},
        401: {"description": "`files_require_key` is on and no valid key was sent."},
        404: {"description": "No such file (or it expired, or another tenant's)."},
        416: {"description": "The range starts past the end of the file."},
    },
    summary="Download a stored file",
)
def get_file(
    kind: str, file_id: str, name: str, request: Request, storage: StorageDep, settings: SettingsDep
) -> Response:
    """The file's bytes; `Range: bytes=a-b` answers 206 with that slice."""
    key = f"{kind}/{file_id}/{name}"
    if settings.files_require_key:  # only the owner's key (or an admin's); others see a 404
        owner = authenticate(request.headers.get("authorization"), settings).owner
        if owner is not None and file_owner_tag(file_id) != owner_tag(owner):
            raise FileNotFoundHTTPError()
    try:
        if kind not in PUBLIC_KINDS:
            raise FileNotFoundError(key)
        stored = storage.stat(key)
    except FileNotFoundError:
        raise FileNotFoundHTTPError() from None
    etag, last_modified = _validators(stored)
    headers = {
        **_SAFE_HEADERS,
        "Cache-Control": f"private, max-age={int(settings.output_retention_s)}",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": last_modified,
    }
    if_range = request.headers.get("if-range")
    span = None
    if if_range is None or if_range in (etag, last_modified):
        span = byte_range(request.headers.get("range"), stored.file_size)
    start, end = span or (0, stored.file_size)
    headers["Content-Length"] = str(end - start)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.file_size}"
    status = 206 if span is not None else 200
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=stored.content_type)
    try:
        chunks = storage.read(key, start, end)
    except FileNotFoundError:  # deleted since the stat
        raise FileNotFoundHTTPError() from None
    return StreamingResponse(
        chunks, status_code=status, headers=headers, media_type=stored.content_type
    )
