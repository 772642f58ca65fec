"""`WorkerSupervisor`: keeps `settings.workers` worker processes alive next to the API.

It runs in the process that serves the API (started by the app's lifespan when `workers > 0`) but
is no part of the app: it only spawns `server.worker` processes ("spawn", so each loads its own
model and the API process never imports torch or the worker module), restarts the ones that die,
and hands their jobs back to the job store. Workers on other machines need no supervisor here:
they share only the job store URL and the storage URL (`ovi worker`).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType

from server.jobs.base import JobStore
from server.settings import ServerSettings

log = logging.getLogger(__name__)


def worker_main(settings: ServerSettings, worker_id: str, slot: int, stop_event: EventType) -> None:
    """Entry point of a spawned worker process (imports the worker there, not here)."""
    if settings.runtime.parallel_size > 1:  # --cfg-parallel/--sp: a group of ranks per clip
        from server.worker_group import worker_group_main

        worker_group_main(settings, worker_id, slot, stop_event)
        return
    from server.worker import worker_process_main

    worker_process_main(settings, worker_id, slot, stop_event)


@dataclass
class _Slot:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    worker_id: str = ""
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class WorkerSupervisor:
    """Keeps `settings.workers` worker processes alive (multiprocessing "spawn").

    A worker that dies has its running job re-queued once (then failed) and is restarted, with
    backoff when it keeps dying early (e.g. the weights do not load).
    """

    def __init__(
        self,
        settings: ServerSettings,
        store: JobStore,
        *,
        target: Callable[..., None] = worker_main,
    ) -> None:
        self.settings = settings
        self.store = store
        self.target = target
        self._ctx = multiprocessing.get_context("spawn")
        self._stop_event = self._ctx.Event()
        self._stopping = threading.Event()
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._thread = threading.Thread(target=self._monitor, name="ovi-supervisor", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self.reap_dead_local_workers()
        for slot in self._slots:
            self._spawn(slot)
        self._thread.start()

    def reap_dead_local_workers(self) -> None:
        """Workers registered from this host whose process is gone (a crashed previous run):
        their jobs are recovered now rather than after the staleness timeout."""
        host = socket.gethostname()
        dead = [
            w.id for w in self.store.workers() if w.host == host and w.pid and not _pid_alive(w.pid)
        ]
        if dead:
            recovered = self.store.recover(dead, max_attempts=self.settings.max_attempts)
            log.warning("recovered %d job(s) of %d dead worker(s)", len(recovered), len(dead))

    def _spawn(self, slot: _Slot) -> None:
        slot.worker_id = (
            f"{socket.gethostname()}-{os.getpid()}-w{slot.index}-{uuid.uuid4().hex[:6]}"
        )
        slot.process = self._ctx.Process(
            target=self.target,
            args=(self.settings, slot.worker_id, slot.index, self._stop_event),
            name=f"ovi-worker-{slot.index}",
            daemon=True,
        )
        slot.process.start()
        slot.started_at = time.monotonic()
        log.info("started worker %s (pid %s)", slot.worker_id, slot.process.pid)

    def _monitor(self) -> None:
        while not self._stopping.wait(0.25):
            with self._lock:
                for slot in self._slots:
                    self._check(slot)

    def _check(self, slot: _Slot) -> None:
        if self._stopping.is_set():
            return
        process = slot.process
        if process is not None and process.is_alive():
            return
        now = time.monotonic()
        if process is not None:
            log.error("worker %s exited with code %s", slot.worker_id, process.exitcode)
            recovered = self.store.recover(
                [slot.worker_id], max_attempts=self.settings.max_attempts
            )
            if recovered:
                log.warning("re-queued or failed: %s", ", ".join(recovered))
            lived = now - slot.started_at
            slot.failures = 0 if lived > 60 else slot.failures + 1
            slot.restart_at = now + min(60.0, 0.5 * 2 ** max(0, slot.failures - 1))
            slot.process = None
        if now >= slot.restart_at:
            self._spawn(slot)

    def alive(self) -> list[str]:
        return [s.worker_id for s in self._slots if s.process is not None and s.process.is_alive()]

    def stop(self, grace_s: float | None = None) -> None:
        """Ask workers to stop (a running job goes back to the queue), then make sure."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._stopping.is_set() and self._stop_event is None:
            return  # already stopped
        self._stopping.set()
        self._stop_event.set()
        if self._thread.is_alive():
            self._thread.join(2)
        deadline = time.monotonic() + grace
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            if process.is_alive():
                log.warning("worker %s did not stop in time; terminating", slot.worker_id)
                process.terminate()
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join(5)
            self.store.recover([slot.worker_id], max_attempts=self.settings.max_attempts)
            process.close()
            slot.process = None
        # Drop the Event's semaphores now: left for interpreter exit, the resource tracker
        # reports them as leaked.
        self._stop_event = None  # type: ignore[assignment]
        gc.collect()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
