"""fal storage compatibility: where ``fal_client.upload_file`` and the JS client's uploads land.

Two flows, both ending in ``{base}/files/uploads/<id>/<name>`` (served by ``routes/files.py``):

* Pre-signed (JS client; Python fallback): ``POST /storage/upload/initiate?storage_type=...``
  ``{file_name, content_type}`` -> ``{upload_url, file_url}``, then ``PUT upload_url`` with the raw
  bytes and no credentials. The URL carries an HMAC token naming the file id, name, type and
  expiry, so it is unguessable, single-file and time-limited; it is single-use too (the file is
  stored only if absent, in one step on every backend: a replay is a 403).
* CDN token (Python client default): ``POST /storage/auth/token?storage_type=fal-cdn-v3`` ``{}``
  -> ``{token, token_type: "Bearer", base_url, expires_at}``, then ``POST {base_url}/files/upload``
  with ``Authorization: Bearer <token>``, ``Content-Type``, ``X-Fal-File-Name`` and the raw bytes
  -> ``{access_url}``.

Both need ``Authorization: Key ...`` like the rest of the API, except the pre-signed PUT. Bodies
over ``upload_max_bytes`` get 413; fal's multipart variants (files over ~90-100 MB) are answered
413 as well. Lifecycle headers (``X-Fal-Object-Lifecycle-Preference``) are ignored: every stored
file lives ``output_retention_s``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from server.deps import AuthDep, BaseUrlDep, SettingsDep, StorageDep, check_api_key
from server.errors import InvalidUploadTokenError, UnauthorizedError, UploadTooLargeError
from server.serving import absolute_url
from server.settings import ServerSettings
from server.storage import (
    Storage,
    StoredFile,
    owned_file_id,
    sanitize_content_type,
    sanitize_file_name,
)

SECRET_FILE_NAME = "upload-signing.key"
_TOKEN_PREFIX = "ovi1"


# --- signed tokens ---


class UploadSigner:
    """HMAC-SHA256 tokens for pre-signed PUT URLs and CDN upload tokens.

    The secret is 32 random bytes in the data dir (created 0600 on first use), so tokens stay
    valid across restarts and across processes sharing the data dir.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> UploadSigner:
        path = Path(data_dir) / SECRET_FILE_NAME
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
        secret = path.read_bytes()
        if len(secret) < 32:
            raise ValueError(f"{path} is too short to be a signing secret")
        return cls(secret)

    def _mac(self, payload: bytes) -> str:
        return _b64(hmac.new(self._secret, payload, hashlib.sha256).digest())

    def sign(self, claims: dict[str, Any]) -> str:
        payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        return f"{_TOKEN_PREFIX}.{payload}.{self._mac(payload.encode())}"

    def verify(self, token: str, *, purpose: str, now: float | None = None) -> dict[str, Any]:
        """The claims of a valid, unexpired token for ``purpose``; raise on anything else."""
        try:
            prefix, payload, mac = token.split(".")
        except ValueError:
            raise InvalidUploadTokenError() from None
        # bytes: compare_digest raises TypeError on non-ASCII str (a 500 for a garbage token)
        expected = self._mac(payload.encode()).encode()
        if prefix != _TOKEN_PREFIX or not hmac.compare_digest(mac.encode(), expected):
            raise InvalidUploadTokenError()
        try:
            claims = json.loads(_unb64(payload))
        except ValueError:
            raise InvalidUploadTokenError() from None
        if claims.get("purpose") != purpose:
            raise InvalidUploadTokenError()
        if float(claims.get("exp", 0)) < (time.time() if now is None else now):
            raise InvalidUploadTokenError("Upload URL or token has expired")
        return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def get_signer(request: Request, settings: SettingsDep) -> UploadSigner:
    """One signer per app, made on first use (nothing at import)."""
    signer = getattr(request.app.state, "upload_signer", None)
    if signer is None:
        signer = UploadSigner.from_data_dir(settings.data_dir)
        request.app.state.upload_signer = signer
    return signer


SignerDep = Annotated[UploadSigner, Depends(get_signer)]


async def read_body_capped(request: Request, limit: int) -> bytes:
    """The raw request body, refusing more than ``limit`` bytes without buffering them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(f"Upload larger than the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLargeError(f"Upload larger than the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def save_upload(
    storage: Storage,
    data: bytes,
    content_type: str | None,
    file_name: str,
    file_id: str | None = None,
    *,
    exclusive: bool = False,
) -> StoredFile:
    """Store an upload (off the event loop); a pre-signed one under the id its URL names
    (`exclusive`: `FileExistsError` if that id already holds it)."""
    ctype = sanitize_content_type(content_type)
    return await to_thread.run_sync(
        lambda: storage.save(
            data,
            kind="uploads",
            content_type=ctype,
            file_name=file_name,
            file_id=file_id,
            exclusive=exclusive,
        )
    )


# --- schemas ---


class InitiateUploadInput(BaseModel):
    file_name: str | None = Field(None, description="Name for the stored file (sanitised).")
    content_type: str | None = Field(None, description="MIME type of the file.")


class InitiateUploadOutput(BaseModel):
    upload_url: str = Field(description="PUT the raw bytes here (no credentials needed).")
    file_url: str = Field(description="Where the file can be read once uploaded.")


class UploadTokenOutput(BaseModel):
    token: str
    token_type: str = "Bearer"
    base_url: str = Field(description="POST `{base_url}/files/upload` with the token.")
    expires_at: str = Field(description="ISO 8601 with UTC offset.")


class UploadOutput(BaseModel):
    access_url: str


# --- routes ---

router = APIRouter(tags=["storage"])

_STORAGE_TYPE = Query(
    None, description="fal's storage backend name (`gcs`, `fal-cdn-v3`); accepted and ignored."
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    408: {"description": "The body stalled (`body_read_timeout_s`)."},
    413: {"description": "File larger than `upload_max_bytes`."},
}


@router.post("/storage/upload/initiate", response_model=InitiateUploadOutput, responses=_ERRORS)
def initiate_upload(
    body: InitiateUploadInput,
    user_id: AuthDep,
    settings: SettingsDep,
    base: BaseUrlDep,
    signer: SignerDep,
    storage: StorageDep,
    storage_type: str | None = _STORAGE_TYPE,
) -> InitiateUploadOutput:
    """Reserve a file URL and hand out a pre-signed, expiring PUT URL for its bytes."""
    content_type = sanitize_content_type(body.content_type)
    name = sanitize_file_name(body.file_name or "upload", content_type)
    file_id = owned_file_id(user_id)
    token = signer.sign(
        {
            "purpose": "put",
            "id": file_id,
            "name": name,
            "ct": content_type,
            "exp": time.time() + settings.upload_url_ttl_s,
        }
    )
    return InitiateUploadOutput(
        upload_url=f"{base}/storage/upload/put/{file_id}?token={token}",
        file_url=absolute_url(storage.url(f"uploads/{file_id}/{name}"), base),
    )


@router.post("/storage/upload/initiate-multipart", responses=_ERRORS, include_in_schema=False)
def initiate_multipart(user_id: AuthDep, settings: SettingsDep) -> None:
    raise UploadTooLargeError(
        f"Multipart uploads are not supported; files up to {settings.upload_max_bytes} bytes"
        " upload in one piece"
    )


@router.put(
    "/storage/upload/put/{file_id}",
    responses={403: {"description": "Invalid, expired or already used upload URL."}, **_ERRORS},
)
async def put_upload(
    file_id: str,
    request: Request,
    settings: SettingsDep,
    base: BaseUrlDep,
    signer: SignerDep,
    storage: StorageDep,
    token: str = Query(description="The signature from `upload_url`."),
) -> dict[str, str]:
    """Receive the bytes for a pre-signed upload; no API key (the URL is the credential)."""
    claims = signer.verify(token, purpose="put")
    if claims.get("id") != file_id:
        raise InvalidUploadTokenError()
    data = await read_body_capped(request, settings.upload_max_bytes)
    try:  # single use: a replay never replaces the file (one atomic step, across replicas too)
        stored = await save_upload(
            storage, data, claims["ct"], claims["name"], file_id, exclusive=True
        )
    except FileExistsError:
        raise InvalidUploadTokenError(USED_UPLOAD_URL) from None
    return {"file_url": absolute_url(stored.url, base)}


USED_UPLOAD_URL = (
    "Upload URL was already used: each upload URL stores one file; get a new one from"
    " POST /storage/upload/initiate"
)


@router.post("/storage/auth/token", response_model=UploadTokenOutput, responses=_ERRORS)
def upload_token(
    user_id: AuthDep,
    settings: SettingsDep,
    base: BaseUrlDep,
    signer: SignerDep,
    storage_type: str | None = _STORAGE_TYPE,
) -> UploadTokenOutput:
    """A short-lived bearer token for ``POST {base_url}/files/upload`` (fal's CDN flow)."""
    expires = time.time() + settings.upload_url_ttl_s
    token = signer.sign({"purpose": "cdn", "sub": user_id, "exp": expires})
    return UploadTokenOutput(
        token=token,
        token_type="Bearer",
        base_url=base,
        expires_at=dt.datetime.fromtimestamp(expires, dt.timezone.utc).isoformat(),
    )


def _check_cdn_auth(
    authorization: str | None, settings: ServerSettings, signer: UploadSigner
) -> str:
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return str(signer.verify(value.strip(), purpose="cdn").get("sub", "local"))
    try:
        return check_api_key(authorization, settings.all_api_keys)
    except UnauthorizedError:
        raise UnauthorizedError(
            "Missing or invalid upload token: send `Authorization: Bearer <token>` from"
            " POST /storage/auth/token, or `Authorization: Key <key>`"
        ) from None


@router.post("/files/upload", response_model=UploadOutput, responses=_ERRORS)
async def cdn_upload(
    request: Request,
    settings: SettingsDep,
    base: BaseUrlDep,
    signer: SignerDep,
    storage: StorageDep,
    authorization: Annotated[str | None, Header()] = None,
    content_type: Annotated[str | None, Header()] = None,
    x_fal_file_name: Annotated[str | None, Header()] = None,
) -> UploadOutput:
    """Store the raw body (fal's v3 CDN upload); answer its URL."""
    user_id = _check_cdn_auth(authorization, settings, signer)
    data = await read_body_capped(request, settings.upload_max_bytes)
    stored = await save_upload(
        storage, data, content_type, x_fal_file_name or "upload", owned_file_id(user_id)
    )
    return UploadOutput(access_url=absolute_url(stored.url, base))


@router.post("/files/upload/multipart", responses=_ERRORS, include_in_schema=False)
def cdn_multipart(settings: SettingsDep) -> None:
    raise UploadTooLargeError(
        f"Multipart uploads are not supported; files up to {settings.upload_max_bytes} bytes"
        " upload in one piece"
    )
