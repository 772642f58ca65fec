"""`ovi worker`: workers on any machine, sharing only the job store and the storage with the API
(`ovi serve --workers 0`): one worker in the foreground, or with `--gpus 0,1,...` one supervised
worker per GPU (restarted when it dies, its job recovered). With `--cfg-parallel`/`--sp` a worker
is a group of ranks for one clip: `--gpus` is then cut into slices of that many GPUs, one
supervised worker group per slice (without `--gpus`, one group of CPU ranks with
`--world-size`)."""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import uuid

from cli.serve import add_settings_flags, check_weights, settings_from_args

log = logging.getLogger("ovi.worker")


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker",
        help="run workers against the configured job store (for `serve --workers 0`)",
        description="Run workers against --job-store / --storage (e.g. redis://HOST:PORT/0 and"
        " s3://bucket/prefix, shared with `ovi serve --workers 0`).",
    )
    add_settings_flags(worker, network=False)
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="also serve this worker's Prometheus metrics on http://0.0.0.0:PORT/metrics"
        " (with --gpus: every supervised worker's, each under a `worker` label)",
    )
    worker.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.logs import configure_logging

    settings = settings_from_args(args)
    check_weights(settings)
    configure_logging(settings.log_level, settings.log_format, process="worker")
    if settings.runtime.gpu_list():
        return run_supervised(settings)
    worker_id = f"{socket.gethostname()}-cli-{uuid.uuid4().hex[:6]}"
    if settings.runtime.parallel_size > 1:  # --cfg-parallel/--sp: a group of CPU ranks
        from server.worker_group import worker_group_main

        return worker_group_main(settings, worker_id, 0)
    from server.metrics import WorkerMetrics
    from server.worker import run_worker_until_signalled

    metrics = WorkerMetrics()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=metrics.registry)
        log.info("worker %s: metrics on port %d", worker_id, settings.metrics_port)
    run_worker_until_signalled(settings, worker_id, metrics=metrics)  # SIGTERM/SIGINT drain it
    return 0


def run_supervised(settings) -> int:  # noqa: ANN001 - ServerSettings, imported lazily
    """One supervised worker (or worker group) per slice of `--gpus` until SIGTERM or Ctrl-C."""
    from server.jobs import open_store
    from server.procs import on_stop_signals
    from server.supervisor import WorkerSupervisor

    groups = settings.runtime.gpu_groups()
    settings = settings.model_copy(update={"workers": len(groups)})
    store = open_store(settings.job_store_url, retry_s=30.0)
    supervisor = WorkerSupervisor(settings, store)
    if settings.metrics_port is not None:  # the workers' heartbeat snapshots, one label each
        from prometheus_client import CollectorRegistry, start_http_server

        from server.metrics import WorkersCollector

        registry = CollectorRegistry()
        registry.register(WorkersCollector(store, supervisor.alive))
        start_http_server(settings.metrics_port, registry=registry)
        log.info("supervisor: its workers' metrics on port %d", settings.metrics_port)
    stop = threading.Event()
    on_stop_signals(stop.set)  # SIGTERM or Ctrl-C: the supervisor stops them all
    supervisor.start()
    log.info("supervising %d workers on GPUs %s", len(groups), groups)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        supervisor.stop()
        store.close()
    return 0
