"""`ovi serve` and `ovi worker`: the server's subcommands, registered on the `ovi` CLI by
`add_serve_commands(subparsers)`.

Flags override `OVI_*` environment variables, which override the `--config` TOML file; see
`server/settings.py` for every setting.
"""

from __future__ import annotations

import argparse
import logging
import socket
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("ovi.serve")


def _add_settings_flags(p: argparse.ArgumentParser, *, network: bool) -> None:
    model = p.add_argument_group("model")
    which = model.add_mutually_exclusive_group()
    which.add_argument("--variant", help="model variant (default 720x720_5s)")
    which.add_argument("--preset", help="random-weight preset for tests and demos (tiny)")
    model.add_argument("--weights-dir", type=Path, help="where `ovi weights` put the files")
    model.add_argument("--device", help="torch device (default cuda)")
    model.add_argument("--cpu-offload", action="store_true", default=None)
    model.add_argument(
        "--offload-text-encoder",
        action="store_true",
        default=None,
        help="umT5 on the CPU, moved to the GPU for prompt encoding (40-48 GB GPUs)",
    )
    model.add_argument("--fp8", action="store_true", default=None, help="float8 fusion weights")
    model.add_argument(
        "--block-offload",
        action="store_true",
        default=None,
        help="stream the DiT's layers from host memory (24-32 GB GPUs)",
    )
    model.add_argument(
        "--fp8-compute",
        action="store_true",
        default=None,
        help="float8 compute of the DiT's block linears (CUDA only)",
    )
    model.add_argument(
        "--batch-cfg", action="store_true", default=None, help="both guidance passes as one batch"
    )
    p.add_argument("--data-dir", type=Path, help="job database, inputs, outputs (default ./data)")
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


def settings_from_args(args: argparse.Namespace) -> Any:
    from server.settings import load_settings

    overrides = {
        name: getattr(args, name, None)
        for name in (
            "variant",
            "preset",
            "weights_dir",
            "device",
            "cpu_offload",
            "offload_text_encoder",
            "fp8",
            "block_offload",
            "fp8_compute",
            "batch_cfg",
            "data_dir",
            "log_level",
            "host",
            "port",
            "tls_cert",
            "tls_key",
            "public_base_url",
            "api_keys",
            "allow_unauthenticated",
            "workers",
        )
    }
    return load_settings(config_file=args.config, **overrides)


def check_weights(settings: Any) -> None:
    """Fail before starting when a real variant's files are missing (the error names the file
    and the command that fetches it), instead of workers failing to load in a loop."""
    if settings.preset is None:
        from model.weights import resolve_files

        resolve_files(settings.weights_dir, settings.variant, fp8=settings.fp8)


def cmd_serve(args: argparse.Namespace) -> int:
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


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker in the foreground against the data dir's job store (for `--workers 0`)."""
    from server.worker import run_worker

    settings = settings_from_args(args)
    check_weights(settings)
    logging.basicConfig(level=settings.log_level.upper())
    worker_id = f"{socket.gethostname()}-cli-{uuid.uuid4().hex[:6]}"
    try:
        run_worker(settings, worker_id)
    except KeyboardInterrupt:
        pass
    return 0


def add_serve_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `serve` and `worker` on the `ovi` CLI."""
    serve = subparsers.add_parser(
        "serve",
        help="run the fal-compatible HTTP server (with its workers)",
        description="Run the fal-compatible API. Settings: flags > OVI_* env > --config file.",
    )
    _add_settings_flags(serve, network=True)
    serve.set_defaults(func=cmd_serve)

    worker = subparsers.add_parser(
        "worker",
        help="run one worker against the data dir's queue (for `serve --workers 0`)",
    )
    _add_settings_flags(worker, network=False)
    worker.set_defaults(func=cmd_worker)
