"""`ovi serve`: the fal-compatible HTTP server and its worker processes.

Settings: flags > `OVI_*` environment variables > the `--config` TOML file > defaults
(`server/settings.py`). The model flags are the same generated ones as `ovi generate`'s.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cli import UsageError
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
    p.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, let a running job finish for this long before it is released back"
        " to the queue (default 0: released at its next step)",
    )
    p.add_argument(
        "--log-format",
        choices=("plain", "json"),
        help="plain lines (default) or one JSON object per line (request id, phase, duration)",
    )
    if not network:
        return
    net = p.add_argument_group("network")
    net.add_argument("--host", help="bind address (default 127.0.0.1)")
    net.add_argument("--port", type=int, help="port (default 8000)")
    net.add_argument("--tls-cert", type=Path, help="PEM certificate (chain): serve https")
    net.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    net.add_argument("--public-base-url", help="base of the URLs handed out to clients")
    net.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        help="accepted key (repeatable); each key is a tenant that sees only its own requests",
    )
    net.add_argument(
        "--admin-api-key",
        dest="admin_api_keys",
        action="append",
        help="key that sees every tenant's requests and /health details (repeatable)",
    )
    net.add_argument(
        "--files-require-key",
        action="store_true",
        default=None,
        help="serve /files only to the owner's key (default: the URL is the capability)",
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


def check_deployment(settings: ServerSettings) -> None:
    """Refuse, before anything starts, what would otherwise fail as a traceback at startup:
    a data dir that cannot be written, TLS files that are not there, a CUDA device torch
    cannot use (when this process starts workers)."""
    import tempfile

    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir):
            pass
    except OSError as e:
        raise UsageError(
            f"--data-dir {data_dir} is not writable ({e.strerror or e}): pass a folder this user"
            " can write with --data-dir (or OVI_DATA_DIR)"
        ) from None
    for flag, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if path is not None and not path.is_file():
            raise UsageError(
                f"{flag} {path}: no such file; make a local CA and certificate with"
                " `ovi tls init tls` (then --tls-cert tls/server.pem --tls-key"
                " tls/server-key.pem), or leave both out to serve plain http"
            )
    if settings.workers > 0:
        from model.checks import check_device

        check_device(settings.runtime.device)


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
    serve.add_argument(
        "--recover-db",
        action="store_true",
        help="move a damaged job database aside (outputs are kept) and start with an empty one",
    )
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.lifecycle import serve
    from server.logs import configure_logging

    settings = settings_from_args(args)
    settings.check_bind_policy()  # ValueError -> "error: ..." from the CLI
    check_deployment(settings)
    configure_logging(settings.log_level, settings.log_format, process="api")
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
    serve(settings, recover_db=args.recover_db)
    return 0
