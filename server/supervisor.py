"""`WorkerSupervisor`: keeps `settings.workers` worker processes alive next to the API.

It runs in the process that serves the API (started by the app's lifespan when `workers > 0`) but
is no part of the app: it only spawns `server.worker` processes ("spawn", so each loads its own
model and the API process never imports torch or the worker module), restarts the ones that die,
and hands their jobs back to the job store. Workers on other machines need no supervisor here:
they share only the job store URL and the storage URL (`ovi worker`).

Stopping never waits on anything a dead process could hold: workers are asked to stop by SIGTERM
(no shared semaphore, so a worker killed while idle cannot block the stop), given
`drain_timeout_s + shutdown_grace_s`, then killed. A job store that fails (full disk, locked or
broken file) never kills the monitor thread: the fault is reported (`problems()`, `/health`) and
the recovery it could not write is retried with backoff until it succeeds.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from server.jobs.base import JobStore
from server.procs import pid_alive
from server.settings import ServerSettings

log = logging.getLogger(__name__)

CRASH_LOOP_FAILURES = 3  # early deaths in a row that make a slot "failing" in /health


def worker_main(settings: ServerSettings, worker_id: str, slot: int) -> None:
    """Entry point of a spawned worker process (imports the worker there, not here)."""
    if settings.runtime.parallel_size > 1:  # --cfg-parallel/--sp: a group of ranks per clip
        from server.worker_group import worker_group_main

        raise SystemExit(worker_group_main(settings, worker_id, slot))
    from server.worker import worker_process_main

    worker_process_main(settings, worker_id, slot)


@dataclass
class _Slot:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    worker_id: str = ""
    started_at: float = 0.0
    failures: int = 0  # early deaths in a row
    restart_at: float = 0.0
    last_exit: int | None = None


class WorkerSupervisor:
    """Keeps `settings.workers` worker processes alive (multiprocessing "spawn").

    A worker that dies has its running job re-queued once (then failed) and is restarted, with
    backoff when it keeps dying early. `begin_stop()` (safe from a signal handler) asks every
    worker to drain; `stop()` also waits for them, within the grace, and kills what is left.
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
        self._stopping = threading.Event()
        self._stopped = False
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._thread = threading.Thread(target=self._monitor, name="ovi-supervisor", daemon=True)
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._unrecovered: set[str] = set()  # dead workers whose jobs the store did not take yet
        self._store_fault = ""
        self._retry_at = 0.0
        self._retry_delay = 0.5

    def start(self) -> None:
        try:
            self.reap_dead_local_workers()
        except Exception as exc:  # a broken store must not keep the workers from starting
            self._fault(exc)
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._thread.start()

    def reap_dead_local_workers(self) -> None:
        """Workers registered from this host whose process is gone (a crashed previous run):
        their jobs are recovered now rather than after the staleness timeout."""
        host = socket.gethostname()
        dead = [
            w.id for w in self.store.workers() if w.host == host and w.pid and not pid_alive(w.pid)
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
            args=(self.settings, slot.worker_id, slot.index),
            name=f"ovi-worker-{slot.index}",
            daemon=True,
        )
        slot.process.start()
        slot.started_at = time.monotonic()
        log.info("started worker %s (pid %s)", slot.worker_id, slot.process.pid)
        if self._stopping.is_set():  # a stop began while it started
            _signal(slot.process.pid, signal.SIGTERM)

    # --- the monitor thread ---

    def _monitor(self) -> None:
        while not self._stopping.wait(0.25):
            with self._lock:
                for slot in self._slots:
                    try:
                        self._check(slot)
                    except Exception:  # never let one slot's trouble end the monitoring
                        log.exception("supervising worker slot %d failed", slot.index)
                self._recover_pending()

    def _check(self, slot: _Slot) -> None:
        if self._stopping.is_set():
            return
        process = slot.process
        if process is not None and process.is_alive():
            return
        now = time.monotonic()
        if process is not None:
            slot.last_exit = process.exitcode
            log.error("worker %s exited with code %s", slot.worker_id, process.exitcode)
            self._unrecovered.add(slot.worker_id)
            self._retry_at = 0.0
            lived = now - slot.started_at
            slot.failures = 0 if lived > 60 else slot.failures + 1
            slot.restart_at = now + min(60.0, 0.5 * 2 ** max(0, slot.failures - 1))
            process.close()
            slot.process = None
            self._recover_pending()
        if now >= slot.restart_at:
            self._spawn(slot)

    def _recover_pending(self) -> None:
        """Hand the jobs of dead workers back to the store; on a store fault, retry later."""
        if not self._unrecovered or time.monotonic() < self._retry_at:
            return
        ids = sorted(self._unrecovered)
        try:
            recovered = self.store.recover(ids, max_attempts=self.settings.max_attempts)
        except Exception as exc:
            self._fault(exc)
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(10.0, self._retry_delay * 2)
            return
        self._unrecovered.clear()
        self._store_fault, self._retry_delay = "", 0.5
        if recovered:
            log.warning("re-queued or failed: %s", ", ".join(recovered))

    def _fault(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self._store_fault:
            log.error("job store fault in the supervisor (will retry): %s", text)
        self._store_fault = text

    # --- state ---

    def alive(self) -> list[str]:
        return [s.worker_id for s in self._slots if s.process is not None and s.process.is_alive()]

    def problems(self) -> list[str]:
        """What `/health` reports about the supervisor: a store fault it is riding out, and
        slots whose worker keeps dying early (restarted with backoff)."""
        out = []
        if self._store_fault:
            out.append(f"supervisor cannot write to the job store (retrying): {self._store_fault}")
        for slot in self._slots:
            if slot.failures >= CRASH_LOOP_FAILURES:
                out.append(
                    f"worker slot {slot.index} keeps exiting (last exit code {slot.last_exit},"
                    f" {slot.failures} early deaths in a row)"
                )
        return out

    def crash_looping(self) -> bool:
        """True when every slot's worker keeps dying early: none can run jobs."""
        return bool(self._slots) and all(s.failures >= CRASH_LOOP_FAILURES for s in self._slots)

    # --- stopping ---

    def begin_stop(self) -> None:
        """Ask every worker to drain (SIGTERM) and stop restarting them. Non-blocking and safe
        to call from a signal handler; repeated calls do nothing more."""
        self._stopping.set()
        for slot in list(self._slots):
            process = slot.process
            if process is not None and process.pid is not None:
                _signal(process.pid, signal.SIGTERM)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop the workers: each finishes or releases its job (no attempt used) within
        `drain_timeout_s + grace_s`; whatever is still running then is killed and its job
        recovered. Always returns within that time plus a few seconds."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            settings = self.settings
            grace = settings.shutdown_grace_s if grace_s is None else grace_s
            deadline = time.monotonic() + settings.drain_timeout_s + grace
            self.begin_stop()
            if self._thread.is_alive():
                self._thread.join(2)
            for slot in self._slots:
                if slot.process is not None:
                    slot.process.join(max(0.0, deadline - time.monotonic()))
            for slot in self._slots:
                process = slot.process
                if process is None:
                    continue
                if process.is_alive():
                    log.warning("worker %s did not stop in time; killing it", slot.worker_id)
                    process.kill()
                    process.join(5)
                self._unrecovered.add(slot.worker_id)
                if not process.is_alive():
                    process.close()
                slot.process = None
            self._retry_at = 0.0
            self._recover_pending()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
