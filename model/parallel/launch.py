"""Start the ranks of one clip on this machine: gloo on the CPU, NCCL on CUDA, no torchrun.

`launch(fn, args, world_size=N)` starts N processes (forked from a clean server process that
imported the model code once, `PRELOAD`; never from this one, which may hold threads or CUDA),
joins them into one process group on a free loopback port and runs `fn(*args)` in each; it
returns rank 0's value. A rank that raises or dies (killed, out of memory) ends the whole group: the
others are terminated and `RankFailed` names the rank and why. Every wait is bounded: the
process group's own timeout (a collective that waits longer fails) and `timeout` for the whole
run. The ranks are the forkserver's children, not this process's: each watches a lifeline pipe
whose only write end this process holds, so when it dies (even by SIGKILL) every rank gets
SIGTERM at once (a handler may stop it gracefully) and exits at the latest `orphan_grace`
seconds later. Under torchrun (`RANK`/`WORLD_SIZE` set) nothing is spawned: `fn` runs in this process.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = 600.0  # one collective may wait this long (a slow rank's whole step)
POLL_S = 0.2
ORPHAN_GRACE_S = 10.0  # a rank whose launcher died exits at the latest this long after SIGTERM
# Ranks are forked from one clean server process (multiprocessing "forkserver": no threads, no
# CUDA) that has imported these once, so N ranks do not import torch and the model N times.
PRELOAD = ("torch", "torch.distributed", "model.pipeline")


class RankFailed(RuntimeError):
    """A rank raised or died; the group was taken down. `bad_input`: the rank raised a
    ValueError or FileNotFoundError (the same bad input fails every rank); `details`: its
    traceback."""

    def __init__(self, message: str, *, bad_input: bool = False, details: str = "") -> None:
        super().__init__(message)
        self.bad_input = bad_input
        self.details = details


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_rank(
    rank: int, world_size: int, port: int, gpus: Sequence[int] | None, timeout_s: float
) -> torch.device:
    """Join the group as `rank` (NCCL with `gpus`, else gloo); returns this rank's device."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if gpus:
        device = torch.device("cuda", gpus[rank])
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(
        backend,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **({"device_id": device} if gpus else {}),
    )
    return device


def _watch_lifeline(lifeline: Connection, grace_s: float, done: threading.Event) -> None:
    """In a rank: when the launcher is gone (EOF on the lifeline), SIGTERM this rank (the main
    thread's handler runs: by default the rank ends at once) and, if it still runs `grace_s`
    later, end it."""
    try:
        lifeline.recv()  # nothing is ever sent: returns only by EOF
    except (EOFError, OSError):
        pass
    if done.is_set():
        return
    logger.warning("rank %d: the launching process is gone; stopping", os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)
    if not done.wait(grace_s):
        os._exit(1)


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    gpus: Sequence[int] | None,
    timeout_s: float,
    fn: Callable[..., Any],
    args: tuple,
    report: Connection,
    lifeline: Connection,
    orphan_grace_s: float,
) -> None:
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_lifeline, args=(lifeline, orphan_grace_s, done), daemon=True
    )
    watcher.start()
    try:
        device = init_rank(rank, world_size, port, gpus, timeout_s)
        value = fn(*args, device=device)
        message: tuple = ("ok", value if rank == 0 else None)
    except BaseException as exc:  # reported to the parent, which ends the group
        bad_input = isinstance(exc, (ValueError, FileNotFoundError))
        message = ("error", (f"{type(exc).__name__}: {exc}", bad_input, traceback.format_exc()))
    done.set()
    try:
        report.send(message)
    except OSError:  # the launcher is gone: nobody to tell
        pass
    finally:
        report.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _died(conn: Connection) -> bool:
    """Whether the rank behind `conn` ended without a report (its pipe is closed)."""
    if not conn.poll():
        return False
    try:
        conn.recv()
    except EOFError:
        return True
    return False


def launch(
    fn: Callable[..., Any],
    args: tuple = (),
    *,
    world_size: int,
    gpus: Sequence[int] | None = None,
    timeout: float | None = None,
    collective_timeout: float = COLLECTIVE_TIMEOUT_S,
    orphan_grace: float = ORPHAN_GRACE_S,
) -> Any:
    """Run `fn(*args, device=...)` on `world_size` ranks (one per entry of `gpus` on CUDA);
    return rank 0's value. `fn` and `args` must be picklable (a module-level function).
    Raises `RankFailed` when a rank raises or dies, `TimeoutError` after `timeout` seconds.
    Should this process die, the ranks end within `orphan_grace` seconds."""
    if gpus is not None and len(gpus) != world_size:
        raise ValueError(f"{len(gpus)} GPUs for {world_size} ranks")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun: join, no spawn
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if world != world_size:
            raise ValueError(f"torchrun started {world} ranks, {world_size} needed")
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = torch.device("cuda", local) if gpus else torch.device("cpu")
        if gpus:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if gpus else "gloo")
        try:
            return fn(*args, device=device)
        finally:
            dist.destroy_process_group()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # no effect once this process's server runs
    port = _free_port()
    procs, pending = [], {}
    lifeline, alive = ctx.Pipe(duplex=False)  # only this process holds `alive`: EOF = it died
    watch = (lifeline, orphan_grace)
    for r in range(world_size):
        receive, send = ctx.Pipe(duplex=False)  # one report per rank; EOF when it dies
        proc = ctx.Process(
            target=_rank_main,
            args=(r, world_size, port, gpus, collective_timeout, fn, args, send, *watch),
            name=f"ovi-rank-{r}",
            daemon=True,
        )
        proc.start()
        send.close()  # the rank holds the only write end
        procs.append(proc)
        pending[receive] = r
    lifeline.close()
    deadline = None if timeout is None else time.monotonic() + timeout
    result = None
    try:
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the {world_size} ranks did not finish in {timeout:.0f} s")
            for conn in wait(list(pending), timeout=POLL_S):
                rank = pending.pop(conn)
                try:
                    status, value = conn.recv()
                except EOFError:
                    procs[rank].join(timeout=5)
                    raise RankFailed(
                        f"rank {rank} died (exit code {procs[rank].exitcode})"
                    ) from None
                conn.close()
                if status == "ok":
                    result = value if rank == 0 else result
                    continue
                message, bad_input, details = value
                time.sleep(POLL_S)  # a rank that died makes the others fail: name it first
                for other, r in pending.items():
                    if _died(other):
                        procs[r].join(timeout=5)
                        raise RankFailed(
                            f"rank {r} died (exit code {procs[r].exitcode}); then rank {rank}"
                            f" failed: {message}",
                            details=details,
                        )
                if not bad_input:
                    logger.error("rank %d failed:\n%s", rank, details)
                raise RankFailed(
                    f"rank {rank} failed: {message}", bad_input=bad_input, details=details
                )
        for proc in procs:  # every rank reported: let them exit on their own
            proc.join(timeout=10)
        return result
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in pending:
            conn.close()
        alive.close()
