"""The server's state for `/health` and for admission: `ready`, `degraded`, `warming`, `failed`.

One function, `assess`, decides it (the route, the submit check and any fleet view read the
same answer):

- `failed`: nothing can run jobs: the job store does not answer, or every worker failed to load
  its model (each with its reason), or every supervised worker keeps dying early.
- `warming`: no worker is ready yet, and at least one is still loading (or none registered).
- `degraded`: workers are ready, but something needs attention and may clear by itself: the data
  directory is (nearly) full, the store refused writes recently, a worker failed while others
  run. Submits are still taken unless the disk is full.
- `ready`: none of the above.

`Faults` is where the API process notes a fault it rode out (a store write that failed in a
submit or the maintenance loop); a fault is forgotten `FAULT_TTL_S` after its last report, or
at once when the same duty succeeds again.
"""

from __future__ import annotations

import errno
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from server.jobs.base import JobStore, WorkerInfo
from server.settings import ServerSettings

if TYPE_CHECKING:
    from server.supervisor import WorkerSupervisor

State = Literal["ready", "degraded", "warming", "failed"]
FAULT_TTL_S = 60.0


class Faults:
    """Faults the API process rode out, by duty name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, tuple[str, float]] = {}

    def report(self, duty: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._active[duty] = (text, time.monotonic())

    def clear(self, duty: str) -> None:
        if duty in self._active:
            with self._lock:
                self._active.pop(duty, None)

    def active(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            for duty, (_, at) in list(self._active.items()):
                if now - at > FAULT_TTL_S:
                    del self._active[duty]
            return [f"{duty}: {text}" for duty, (text, _) in sorted(self._active.items())]


@dataclass
class Readiness:
    """`assess`'s answer: the state, why, and what `/health` lists besides."""

    status: State
    reasons: list[str] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    queue: dict[str, int] = field(default_factory=dict)
    disk_full: bool = False  # submits answer 507
    can_run_jobs: bool = True  # False: submits answer 503 (status `failed`)
    store_unavailable: bool = False  # the job store did not answer (e.g. Redis restarting)

    @property
    def http_status(self) -> int:
        return 200 if self.status in ("ready", "degraded") else 503


def queue_sizes(counts: dict[str, int]) -> dict[str, int]:
    """`/health`'s and `/workers`' queue sizes from the store's `counts()`."""
    return {"in_queue": counts.get("IN_QUEUE", 0), "in_progress": counts.get("IN_PROGRESS", 0)}


def is_live(worker: WorkerInfo, settings: ServerSettings, now: float) -> bool:
    """A worker heard from within `worker_stale_after_s` (a silent one is recovered)."""
    return now - worker.heartbeat_at < settings.worker_stale_after_s


def disk_free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing parent); None if it
    cannot be read."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """True for a write refused for lack of space: ENOSPC/EDQUOT, or SQLite's "database or
    disk is full"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "disk is full" in str(exc).lower() or "no space left" in str(exc).lower()


def disk_problem(settings: ServerSettings) -> str | None:
    """Why the data directory cannot take more writes, or None."""
    free = disk_free_bytes(settings.data_dir)
    floor = settings.min_free_disk_mb * 1024 * 1024
    if free is not None and free <= floor:
        return (
            f"disk full: {free / 1024 / 1024:.1f} MiB free in {settings.data_dir}"
            f" (min_free_disk_mb = {settings.min_free_disk_mb:g})"
        )
    return None


def assess(
    settings: ServerSettings,
    store: JobStore,
    *,
    supervisor: WorkerSupervisor | None = None,
    faults: Faults | None = None,
) -> Readiness:
    """The one computation of the server's state (see the module docstring). Blocking: call it
    from a thread."""
    reasons: list[str] = []
    disk = disk_problem(settings)
    try:
        workers, counts = store.workers(), store.counts()
    except Exception as exc:
        reasons.append(f"job store unavailable: {type(exc).__name__}: {exc}")
        if disk:
            reasons.append(disk)
        return Readiness(
            "failed",
            reasons,
            disk_full=disk is not None,
            can_run_jobs=False,
            store_unavailable=True,
        )
    queue = queue_sizes(counts)
    now = time.time()
    live = [w for w in workers if is_live(w, settings, now)]
    by_state: dict[str, list[WorkerInfo]] = {}
    for w in live:
        by_state.setdefault(w.state, []).append(w)
    failed_workers = [
        f"worker {w.id} failed: {w.detail or 'no reason given'}" for w in by_state.get("failed", [])
    ]
    store_faults = [
        f"worker {w.id}: {w.detail}" for w in live if w.detail.startswith("job store fault")
    ]
    problems = [*failed_workers, *store_faults]
    if supervisor is not None:
        problems += supervisor.problems()
    if faults is not None:
        problems += faults.active()
    if disk:
        problems.insert(0, disk)

    result = Readiness("ready", problems, live, queue, disk_full=disk is not None)
    if by_state.get("ready"):
        result.status = "degraded" if problems else "ready"
    elif by_state.get("warming") or by_state.get("stopping"):
        result.status = "warming"
    elif failed_workers or (supervisor is not None and supervisor.crash_looping()):
        result.status = "failed"
        result.can_run_jobs = False
    else:
        result.status = "warming"  # no worker registered yet (e.g. `--workers 0`)
    return result


def health_body(settings: ServerSettings, readiness: Readiness) -> dict[str, Any]:
    """`/health`'s JSON body for `readiness`."""
    return {
        "status": readiness.status,
        "reasons": readiness.reasons,
        "model": settings.model_name,
        "workers": [w.to_dict() for w in readiness.workers],
        "queue": readiness.queue,
    }
