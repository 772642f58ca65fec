"""`ovi worker`: one worker in the foreground against the configured job store (for
`ovi serve --workers 0`, or workers on other machines)."""

from __future__ import annotations

import argparse
import logging
import socket
import uuid

from cli.serve import add_settings_flags, check_weights, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker",
        help="run one worker against the data dir's queue (for `serve --workers 0`)",
    )
    add_settings_flags(worker, network=False)
    worker.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.worker import run_worker

    settings = settings_from_args(args)
    check_weights(settings)
    logging.basicConfig(level=settings.log_level.upper())
    worker_id = f"{socket.gethostname()}-cli-{uuid.uuid4().hex[:6]}"
    try:
        if settings.runtime.parallel_size > 1:  # --cfg-parallel/--sp: a group of ranks
            from server.worker_group import run_worker_group

            run_worker_group(settings, worker_id)
        else:
            run_worker(settings, worker_id)
    except KeyboardInterrupt:
        pass
    return 0
