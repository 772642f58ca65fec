"""`ovi worker`: workers on any machine, sharing only the job store and the storage with the API
(`ovi serve --workers 0`): one worker in the foreground, or with `--gpus 0,1,...` one supervised
worker process per listed GPU (restarted when it dies, its job recovered)."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import uuid
from types import FrameType

from cli.serve import add_settings_flags, check_weights, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker",
        help="run workers against the configured job store (for `serve --workers 0`)",
        description="Run workers against --job-store / --storage (e.g. redis://HOST:PORT/0 and"
        " s3://bucket/prefix, shared with `ovi serve --workers 0`).",
    )
    add_settings_flags(worker, network=False)
    worker.add_argument(
        "--gpus",
        help="comma-separated GPU indices: one supervised worker process per GPU (e.g. 0,1,2,3)",
    )
    worker.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_weights(settings)
    logging.basicConfig(level=settings.log_level.upper())
    if settings.gpus:
        return run_supervised(settings)
    from server.worker import run_worker_until_signalled

    worker_id = f"{socket.gethostname()}-cli-{uuid.uuid4().hex[:6]}"
    run_worker_until_signalled(settings, worker_id)  # SIGTERM/SIGINT drain it
    return 0


def run_supervised(settings) -> int:  # noqa: ANN001 - ServerSettings, imported lazily
    """One worker process per GPU in `settings.gpus` until SIGTERM or Ctrl-C."""
    from server.jobs import open_store
    from server.supervisor import WorkerSupervisor

    settings = settings.model_copy(update={"workers": len(settings.gpus)})
    store = open_store(settings.job_store_url, retry_s=30.0)
    supervisor = WorkerSupervisor(settings, store)
    stop = threading.Event()
    _on_sigterm(stop)
    supervisor.start()
    logging.getLogger("ovi.worker").info("supervising workers on GPUs %s", ",".join(settings.gpus))
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()
        store.close()
    return 0


def _on_sigterm(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
