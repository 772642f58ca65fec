"""`serve(settings)`: how `ovi serve` starts and stops, in an order that never hides a fault.

1. The job database is checked before anything else (`check_data_dir`): a damaged file is
   refused with one line naming it and the way forward (`ovi serve --recover-db`, which moves it
   aside and keeps the outputs); a database that is missing or empty where the data directory
   shows earlier use is a loud warning (earlier requests are gone).
2. The port is bound (`bind_socket`) before the app starts: a port in use is one `error:` line
   at once, not after the workers have loaded the model.
3. uvicorn runs the app on that socket. Its SIGTERM/SIGINT handler also starts the workers'
   drain at once (`WorkerSupervisor.begin_stop`), so the workers stop while uvicorn closes
   connections; the lifespan's `supervisor.stop` then bounds the rest.

A stop takes at most `5 s (connections) + drain_timeout_s + shutdown_grace_s` (+ ~2 s): give
`docker stop -t` / `stop_grace_period` / systemd's `TimeoutStopSec` more than that.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from server.jobs.sqlite import DatabaseCorruptError, check_database
from server.settings import ServerSettings

log = logging.getLogger(__name__)

DATA_MARK = ".ovi-data.json"  # in data_dir: written at the first start, read at each start
UVICORN_CONNECTION_GRACE_S = 5.0


def _sqlite_file(settings: ServerSettings) -> Path | None:
    url = settings.job_store_url
    if not url.startswith("sqlite:"):
        return None
    from server.jobs import sqlite_path

    return sqlite_path(url)


def recover_database(settings: ServerSettings) -> Path | None:
    """Move the SQLite job database (and its -wal/-shm files) aside, so the next start makes a
    new one; outputs and uploads (the storage) are not touched. The new name of the file, or
    None if there was none."""
    path = _sqlite_file(settings)
    if path is None or not path.exists():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(path) + suffix)
        if part.exists():
            part.rename(Path(str(moved) + suffix))
    return moved


def check_data_dir(settings: ServerSettings, *, recover_db: bool = False) -> list[str]:
    """Start-up checks of the data directory and the job database (see the module docstring).
    Returns the warnings it printed; raises ValueError (one line) for a damaged database."""
    warnings: list[str] = []
    path = _sqlite_file(settings)
    mark = settings.data_dir / DATA_MARK
    if recover_db:
        moved = recover_database(settings)
        if moved is not None:
            warnings.append(
                f"moved the job database aside to {moved}; a new one starts empty"
                f" (outputs in {settings.storage_url} are kept)"
            )
    if path is not None:
        version = None
        if path.exists():
            try:
                version = check_database(path)
            except DatabaseCorruptError as exc:
                raise ValueError(
                    f"{exc}: run `ovi serve --recover-db` (with the same --data-dir/--job-store)"
                    " to move it aside and start with an empty queue; outputs are kept"
                ) from None
        if (version is None or version == 0) and mark.exists() and not recover_db:
            since = _read_mark(mark).get("first_start", "an earlier run")
            state = "missing" if version is None else "empty"
            warnings.append(
                f"the job database {path} is {state}, but {settings.data_dir} has been used"
                f" since {since}: every earlier request id will answer 404 and queued work is"
                " gone; starting with a new, empty database"
            )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not mark.exists():
        first = datetime.now(timezone.utc).isoformat(timespec="seconds")
        mark.write_text(json.dumps({"first_start": first, "job_store": settings.job_store_url}))
    for text in warnings:
        log.warning("%s", text)
        print(f"WARNING: {text}", file=sys.stderr, flush=True)
    return warnings


def _read_mark(mark: Path) -> dict[str, Any]:
    try:
        data = json.loads(mark.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def bind_socket(settings: ServerSettings) -> socket.socket:
    """The listening socket for `settings.host:port`, bound now; ValueError (one line) if the
    address is in use or cannot be bound."""
    try:
        infos = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ValueError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ValueError(
            f"cannot listen on {settings.host}:{settings.port}: {reason}"
            " (another server running? pick another --port)"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(settings: ServerSettings, *, recover_db: bool = False) -> None:
    """Check, bind, then run the API (and its workers) until SIGTERM/SIGINT."""
    import uvicorn

    from server.main import create_app

    check_data_dir(settings, recover_db=recover_db)
    sock = bind_socket(settings)
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            supervisor = getattr(app.state, "supervisor", None)
            if supervisor is not None:
                supervisor.begin_stop()  # the workers drain while uvicorn closes connections
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours (plain or JSON)
        access_log=settings.log_format == "plain",  # JSON mode: ovi.access has the request id
        proxy_headers=False,  # X-Forwarded-* are honoured by us, from trusted_proxies only
        server_header=False,
        timeout_graceful_shutdown=int(UVICORN_CONNECTION_GRACE_S),
    )
    try:
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
