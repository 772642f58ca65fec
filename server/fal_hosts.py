"""The host names fal's released clients call, and what each one serves here.

Read from the sources of `fal-client` 1.0.3 (`fal_client/auth.py`, `fal_client/client.py`) and
`@fal-ai/client` 1.10.1 (`src/request.js`, `src/config.js`, `src/storage.js`). Pointing these names
at this server (`/etc/hosts`, DNS; see docs/drop-in.md) with a certificate that covers them
(`ovi tls init DIR --fal-hosts`) makes both clients work with no code change at all.

Each host maps to the part of this API it reaches; `server.middleware.FalHostMiddleware` routes
by the `Host` header with this table.
"""

from __future__ import annotations

from typing import Literal

HostRole = Literal["run", "queue", "rest", "cdn"]

FAL_HOSTS: dict[str, HostRole] = {
    "fal.run": "run",  # sync `POST /{app}` (both clients; JS `fal.run`)
    "queue.fal.run": "queue",  # queue submit/status/result/cancel (both clients)
    "rest.fal.ai": "rest",  # /storage/upload/initiate, /storage/auth/token (uploads)
    "v3.fal.media": "cdn",  # Python `upload_file`: POST /files/upload with the CDN token
    "falrun.com": "run",  # fal-client's backup domain for fal.run (after a connect failure)
    "queue.falrun.com": "queue",  # ... and for queue.fal.run
}


def host_role(host_header: str) -> HostRole | None:
    """The role of a `Host` header value (port and case ignored); None for other hosts."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal never names a fal host
        return None
    return FAL_HOSTS.get(host.rsplit(":", 1)[0].rstrip("."))
