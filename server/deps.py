"""Shared route dependencies as `Annotated` aliases: settings, store, storage, the request
service, auth, URLs and submit options.

They are `async def` although none awaits: FastAPI runs a plain `def` dependency in a worker
thread, and a submit resolves about a dozen of them (40 thread hops per request, measured).

Everything lives on `app.state` (made by the lifespan in `server.main`), so tests build an app
with their own settings or store and nothing is a module-level singleton.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Header, Query, Request
from fastapi.security import APIKeyHeader

from server.errors import BadRequestError, UnauthorizedError
from server.jobs.base import JobStore
from server.serving import Serving, Submission, SubmitOptions
from server.settings import ServerSettings
from server.storage import Storage


async def get_app_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_serving(request: Request) -> Serving:
    return request.app.state.serving


SettingsDep = Annotated[ServerSettings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
ServingDep = Annotated[Serving, Depends(get_serving)]


# --- auth ---

_api_key_header = APIKeyHeader(
    name="Authorization",
    scheme_name="apiKeyAuth",
    description='fal-style key: "Key <key>"',
    auto_error=False,
)


def key_user_id(key: str) -> str:
    """A stable, non-secret id for a key: the part before ':' of `id:secret`, else a hash."""
    if ":" in key:
        return key.split(":", 1)[0]
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def check_api_key(authorization: str | None, keys: list[str]) -> str:
    """The caller's user id if `authorization` is `Key <k>` with a configured k; else raise.

    Every configured key is compared (constant time each), so timing says nothing about which
    key or how much of it matched. No keys configured: everyone is "local".
    """
    if not keys:
        return "local"
    scheme, _, presented = (authorization or "").strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "key" or not presented:
        raise UnauthorizedError()
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(presented.encode(), key.encode()):
            matched = key
    if matched is None:
        raise UnauthorizedError()
    return key_user_id(matched)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a tenant (its key's id) or, with an admin key, someone who sees all."""

    user_id: str
    admin: bool = False

    @property
    def owner(self) -> str | None:
        """The owner a request must have to be visible to this caller; None: any."""
        return None if self.admin else self.user_id


def authenticate(authorization: str | None, settings: ServerSettings) -> Caller:
    """The `Caller` behind an `Authorization` header; `UnauthorizedError` for a bad key."""
    user_id = check_api_key(authorization, settings.all_api_keys)
    presented = (authorization or "").strip().partition(" ")[2].strip().encode()
    admin = False
    for key in settings.admin_api_keys:  # every one compared, as in check_api_key
        admin |= hmac.compare_digest(presented, key.encode())
    return Caller(user_id, admin=admin)


async def require_caller(
    settings: SettingsDep,
    authorization: Annotated[str | None, Depends(_api_key_header)] = None,
) -> Caller:
    return authenticate(authorization, settings)


CallerDep = Annotated[Caller, Depends(require_caller)]


async def require_bearer_caller(
    settings: SettingsDep,
    authorization: Annotated[
        str | None, Header(description='"Bearer <key>" (or fal\'s "Key <key>")')
    ] = None,
) -> Caller:
    """`require_caller` for the OpenAI-style API: `Bearer <key>` (the `openai` SDK's) is read as
    fal's `Key <key>`, against the same keys, admin keys included."""
    scheme, _, rest = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        authorization = f"Key {rest.strip()}"
    return authenticate(authorization, settings)


BearerCallerDep = Annotated[Caller, Depends(require_bearer_caller)]


async def optional_caller(
    settings: SettingsDep,
    authorization: Annotated[str | None, Depends(_api_key_header)] = None,
) -> Caller | None:
    """The caller when the request carries a valid key (or no keys are configured), else None:
    for answers with a public part and details for key holders only (`/health`)."""
    if not settings.all_api_keys:
        return Caller("local")
    try:
        return authenticate(authorization, settings)
    except UnauthorizedError:
        return None


OptionalCallerDep = Annotated[Caller | None, Depends(optional_caller)]

# What `/health` tells a caller without a key: the state and the queue sizes, nothing that names
# a host, a process, a worker or a request.
PUBLIC_HEALTH_FIELDS = ("status", "queue")


def public_health(body: dict) -> dict:
    return {k: v for k, v in body.items() if k in PUBLIC_HEALTH_FIELDS}


async def require_api_key(caller: CallerDep) -> str:
    return caller.user_id


AuthDep = Annotated[str, Depends(require_api_key)]


# --- absolute URLs ---


def _trusted(request: Request, settings: ServerSettings) -> bool:
    if not settings.trusted_proxies or request.client is None:
        return False
    try:
        ip = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in settings.trusted_proxies)


def base_url(request: Request, settings: ServerSettings) -> str:
    """`scheme://host[:port]` clients should use: the configured public base URL, else the
    request's own, with X-Forwarded-Proto/Host applied when the peer is a trusted proxy."""
    if settings.public_base_url:
        return settings.public_base_url
    scheme = request.url.scheme
    host = request.headers.get("host") or request.url.netloc
    if _trusted(request, settings):
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        fwd_host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if proto in ("http", "https"):
            scheme = proto
        if fwd_host:
            host = fwd_host
    return f"{scheme}://{host}"


def queue_base_url(request: Request, settings: ServerSettings) -> str:
    """Base of queue URLs: `<base>/queue`, or `<base>` when the request came in on a `queue.`
    host at the root (see `QueueHostMiddleware`) and `<base>` names a `queue.` host too (a
    public base URL or forwarded host that does not would 404 at its root)."""
    base = base_url(request, settings)
    if request.scope.get("ovi.queue_host"):
        parts = urlsplit(base)
        if (parts.hostname or "").startswith("queue.") and not parts.path:
            return base
    return base + "/queue"


async def get_base_url(request: Request, settings: SettingsDep) -> str:
    return base_url(request, settings)


async def get_queue_base_url(request: Request, settings: SettingsDep) -> str:
    return queue_base_url(request, settings)


BaseUrlDep = Annotated[str, Depends(get_base_url)]
QueueBaseUrlDep = Annotated[str, Depends(get_queue_base_url)]


# --- submit options (query and headers fal's clients send) ---


async def get_submit_options(
    fal_webhook: Annotated[
        str | None, Query(description="URL to POST the result to when the request completes.")
    ] = None,
    x_fal_request_timeout: Annotated[
        str | None,
        Header(description="Seconds the request may wait before starting; then 504."),
    ] = None,
    x_fal_queue_priority: Annotated[
        str | None, Header(description="`normal` (default) or `low`.")
    ] = None,
) -> SubmitOptions:
    timeout: float | None = None
    if x_fal_request_timeout not in (None, ""):
        try:
            timeout = float(x_fal_request_timeout)
        except ValueError:
            raise BadRequestError("X-Fal-Request-Timeout must be a number of seconds") from None
        if not timeout > 0:
            raise BadRequestError("X-Fal-Request-Timeout must be positive")
    priority = (x_fal_queue_priority or "normal").strip().lower()
    if priority not in ("normal", "low"):
        raise BadRequestError("X-Fal-Queue-Priority must be `normal` or `low`")
    return SubmitOptions(
        webhook_url=fal_webhook or None,
        start_timeout_s=timeout,
        priority=priority,  # type: ignore[arg-type]
    )


SubmitOptionsDep = Annotated[SubmitOptions, Depends(get_submit_options)]


async def get_submission(
    options: SubmitOptionsDep, user_id: AuthDep, base: BaseUrlDep
) -> Submission:
    return Submission(options=options, user_id=user_id, base_url=base)


SubmissionDep = Annotated[Submission, Depends(get_submission)]


def parse_flag(value: str | None) -> bool:
    """`logs=1|true|yes` -> True; `0|false|no`, empty or missing -> False."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
