"""`ovi worker`: one worker in the foreground against the configured job store (for
`ovi serve --workers 0`, or workers on other machines)."""

from __future__ import annotations

import argparse
import logging
import socket
import uuid

from cli.serve import add_settings_flags, check_weights, settings_from_args

log = logging.getLogger("ovi.worker")


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker",
        help="run one worker against the data dir's queue (for `serve --workers 0`)",
    )
    add_settings_flags(worker, network=False)
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="also serve this worker's Prometheus metrics on http://0.0.0.0:PORT/metrics",
    )
    worker.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.logs import configure_logging
    from server.metrics import WorkerMetrics
    from server.worker import run_worker

    settings = settings_from_args(args)
    check_weights(settings)
    configure_logging(settings.log_level, settings.log_format, process="worker")
    worker_id = f"{socket.gethostname()}-cli-{uuid.uuid4().hex[:6]}"
    metrics = WorkerMetrics()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=metrics.registry)
        log.info("worker %s: metrics on port %d", worker_id, settings.metrics_port)
    try:
        run_worker(settings, worker_id, metrics=metrics)
    except KeyboardInterrupt:
        pass
    return 0
