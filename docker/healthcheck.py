"""Docker HEALTHCHECK: GET /health on the configured scheme and port (healthy: `ready` or
`degraded`, HTTP 200). Reads the same OVI_* variables as the server; a self-signed certificate
is accepted, as this only talks to the server in its own container."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("OVI_PORT", "8000")
    scheme = "https" if os.environ.get("OVI_TLS_CERT") else "http"
    context = None
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # 503 (warming/failed), refused, timeout
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
