"""`ovi serve`: the fal-compatible HTTP server and its worker processes.

Settings: flags > `OVI_*` environment variables > the `--config` TOML file > defaults
(`server/settings.py`). The model flags are the same generated ones as `ovi generate`'s.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cli.flags import add_model_flags

if TYPE_CHECKING:
    from server.settings import ServerSettings

log = logging.getLogger("ovi.serve")


def add_settings_flags(p: argparse.ArgumentParser, *, network: bool) -> None:
    """The flags `serve` and `worker` share (model and data), plus the network ones."""
    add_model_flags(p)
    p.add_argument("--data-dir", type=Path, help="job database, inputs, outputs (default ./data)")
    p.add_argument("--job-store", help="job store URL (default sqlite:///<data-dir>/jobs.sqlite3)")
    p.add_argument("--storage", help="file storage URL (default file://<data-dir>/files)")
    p.add_argument("--config", type=Path, help="TOML settings file (also OVI_CONFIG)")
    p.add_argument("--log-level", help="debug, info, warning, error")
    if not network:
        return
    net = p.add_argument_group("network")
    net.add_argument("--host", help="bind address (default 127.0.0.1)")
    net.add_argument("--port", type=int, help="port (default 8000)")
    net.add_argument("--tls-cert", type=Path, help="PEM certificate (chain): serve https")
    net.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    net.add_argument("--public-base-url", help="base of the URLs handed out to clients")
    net.add_argument(
        "--api-key", dest="api_keys", action="append", help="accepted key (repeatable)"
    )
    net.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="allow a non-loopback --host with no API keys",
    )
    p.add_argument("--workers", type=int, help="worker processes, one per GPU (0: API only)")
    p.add_argument(
        "--gpus-per-worker", type=int, help="GPUs per worker group (with --cfg-parallel/--sp)"
    )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Every flag that names a setting overrides it; flags not given (None) do not."""
    from server.settings import ServerSettings, load_settings

    overrides = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    return load_settings(config_file=args.config, **overrides)


def check_weights(settings: ServerSettings) -> None:
    """Fail before starting when a real variant's files are missing (the error names the file
    and the command that fetches it), instead of workers failing to load in a loop."""
    if settings.preset is None:
        from model.weights import resolve_files

        resolve_files(settings.weights_dir, settings.variant, fp8=settings.fp8)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the fal-compatible HTTP server (with its workers)",
        description="Run the fal-compatible API. Settings: flags > OVI_* env > --config file.",
    )
    add_settings_flags(serve, network=True)
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from server.main import create_app

    settings = settings_from_args(args)
    settings.check_bind_policy()  # ValueError -> "error: ..." from the CLI
    if settings.workers > 0:
        check_weights(settings)
    scheme = "https" if settings.tls_cert else "http"
    log.info(
        "serving %s on %s://%s:%s (data %s, %d worker(s))",
        settings.model_name,
        scheme,
        settings.host,
        settings.port,
        settings.data_dir,
        settings.workers,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # X-Forwarded-* are honoured by us, from trusted_proxies only
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    return 0
