"""The job store: the queue, the request records, the worker registry and the webhook outbox
behind one interface.

Routes only write and read the store; workers (in child processes here, on other machines later)
claim from it. Everything a route, a worker or the maintenance loop needs goes through
`JobStore`, so another backend (Redis, ...) replaces `SqliteJobStore` by one URL setting
(`server.jobs.open_store`) without touching any of them; `tests/contract` holds every backend to
the same behaviour. Methods are synchronous: the worker calls them from its loop, and async routes
call them through a thread (`anyio.to_thread`). Refusals are the classes of `server.jobs.errors`.

Lifecycle of a job (the three states fal's clients understand):

    IN_QUEUE --claim--> IN_PROGRESS --complete--> COMPLETED
        |                   |  \\--release (shutdown)--> IN_QUEUE (same place, no attempt used)
        |                   \\--worker died--> IN_QUEUE once more, then COMPLETED with an error
        \\--cancel / start deadline passed--> COMPLETED with an error

A job's input files (the i2v image) live in `server.storage`; the job keeps only their keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal, Protocol

Priority = Literal["normal", "low"]
PRIORITIES: tuple[str, ...] = ("normal", "low")  # claim order
WorkerState = Literal["warming", "ready", "failed", "stopping"]


class JobStatus(str, Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


@dataclass(frozen=True)
class JobError:
    """Why a job ended without a result, replayed as the result URL's non-2xx answer.

    `detail` is the body's `detail`: a string for request errors (fal's `{detail, error_type}`)
    or a list of `{loc, msg, type}` for input errors found late (422).
    """

    message: str
    error_type: str
    status_code: int = 500
    detail: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        return cls(
            message=data["message"],
            error_type=data["error_type"],
            status_code=int(data.get("status_code", 500)),
            detail=data.get("detail"),
        )

    @property
    def body_detail(self) -> Any:
        return self.message if self.detail is None else self.detail


# The errors the store itself decides (the worker decides the rest, see server/worker.py).
# Status codes are chosen so neither fal client retries a final answer: the JS client retries
# 429/502/503/504 (re-POSTing a whole `fal.run`), so a lost worker is a 500, not a 503; the
# start timeout's 504 carries `X-Fal-Request-Timeout-Type: user`, which both clients honour.
CANCELLED = JobError("Request was cancelled", "client_cancelled", 499)
START_TIMEOUT = JobError("Request timed out before it started", "request_timeout", 504)
WORKER_LOST = JobError(
    "The worker running this request stopped unexpectedly, also on the retry",
    "runner_disconnected",
    500,
)


@dataclass(frozen=True)
class NewJob:
    """What a route submits."""

    app: str  # endpoint id, e.g. "fal-ai/ovi/image-to-video"
    input: dict[str, Any]  # the validated request body (model_dump)
    base_url: str = ""  # absolute base for URLs in webhooks (routes rebuild theirs per request)
    priority: Priority = "normal"
    start_timeout_s: float | None = None  # X-Fal-Request-Timeout
    webhook_url: str | None = None
    input_files: dict[str, str] = field(default_factory=dict)  # name -> storage key
    request_id: str | None = None  # None: the store makes one
    user_id: str = "local"  # who submitted it (an API key's id), for webhook signatures


@dataclass(frozen=True)
class Outcome:
    """How a worker ends a job: a `result`, or an `error`; `metrics` either way."""

    result: dict[str, Any] | None = None
    error: JobError | None = None
    metrics: dict[str, Any] | None = None


@dataclass
class Job:
    id: str
    app: str
    input: dict[str, Any]
    status: JobStatus
    priority: Priority
    created_at: float
    base_url: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    start_deadline: float | None = None
    cancel_requested: bool = False
    attempts: int = 0
    worker_id: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    gateway_request_id: str | None = None
    user_id: str = "local"
    input_files: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status is JobStatus.COMPLETED


@dataclass(frozen=True)
class LogEntry:
    message: str
    level: str = "INFO"
    source: str = "USER"
    timestamp: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    state: WorkerState
    heartbeat_at: float
    host: str = ""
    pid: int = 0
    job_id: str | None = None
    detail: str = ""
    started_at: float = 0.0
    # The worker's Prometheus registry at its last heartbeat (`server.metrics.snapshot`).
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        hidden = ("heartbeat_at", "started_at", "metrics")
        shown = {k: v for k, v in asdict(self).items() if k not in hidden}
        return {**shown, "heartbeat_at": iso_timestamp(self.heartbeat_at)}


@dataclass(frozen=True)
class Delivery:
    """One webhook in the outbox: the signed body is made per attempt from these fields."""

    request_id: str  # one delivery per request
    url: str
    body: bytes
    user_id: str = "local"
    attempts: int = 0  # failed attempts so far


def iso_timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


class JobStore(Protocol):
    """The queue and request records. Implementations must be safe across processes."""

    # --- routes ---
    def submit(self, job: NewJob, *, max_queue_size: int | None = None) -> Job:
        """Store a new IN_QUEUE job; `QueueFullError` when `max_queue_size` are waiting."""
        ...

    def get(self, request_id: str, *, with_input: bool = True) -> Job:
        """The job, with a passed start deadline applied; `JobNotFoundError` if unknown.
        `with_input=False` leaves `input` empty ({}) and does not read it (status polls)."""
        ...

    def queue_position(self, request_id: str) -> int | None:
        """Exact 0-based position among waiting jobs in claim order; None if not waiting."""
        ...

    def logs(self, request_id: str, *, since: int = 0) -> list[LogEntry]:
        """Log lines from index `since` on."""
        ...

    def cancel(self, request_id: str) -> Job:
        """Cancel: a waiting job completes as cancelled now, a running one gets the flag its
        worker checks between steps. `JobAlreadyCompletedError` after completion."""
        ...

    def counts(self) -> dict[str, int]:
        """Jobs per state: {"IN_QUEUE": n, "IN_PROGRESS": m}."""
        ...

    def queue_depths(self) -> dict[str, int]:
        """Waiting jobs per priority: {"normal": n, "low": m} (every priority present)."""
        ...

    def recent(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        newest_first: bool = True,
        user_id: str | None = None,
    ) -> list[Job]:
        """Up to `limit` jobs in submit order (newest first by default), starting after the job
        `after` (a cursor; `JobNotFoundError` if unknown); only `user_id`'s when given."""
        ...

    def delete(self, request_id: str) -> Job:
        """Forget a job: its record, logs and webhook delivery; returns it as it was (so the
        caller can delete its files). A worker still running it finds it gone at `complete`.
        `JobNotFoundError` if unknown."""
        ...

    # --- workers ---
    def claim(self, worker_id: str) -> Job | None:
        """Atomically take the next waiting job (normal before low, oldest first)."""
        ...

    def append_log(
        self, request_id: str, message: str, *, level: str = "INFO", source: str = "USER"
    ) -> None: ...

    def is_cancel_requested(self, request_id: str) -> bool:
        """True once a cancel was asked for, or when the job was deleted meanwhile."""
        ...

    def complete(self, request_id: str, worker_id: str, outcome: Outcome) -> bool:
        """Record the end of a job this worker holds; False if it no longer holds it."""
        ...

    def release(self, request_id: str, worker_id: str) -> bool:
        """Put a job back in its queue place without using an attempt (clean shutdown)."""
        ...

    def heartbeat(self, info: WorkerInfo) -> None: ...

    def workers(self) -> list[WorkerInfo]: ...

    def remove_worker(self, worker_id: str) -> None: ...

    # --- maintenance ---
    def recover(self, worker_ids: list[str], *, max_attempts: int) -> list[str]:
        """Jobs held by these dead workers: re-queued while attempts remain, else failed."""
        ...

    def stale_workers(self, older_than_s: float) -> list[str]:
        """Workers whose last heartbeat is older than this, and ids holding running jobs with
        no worker record at all."""
        ...

    def expire_overdue(self) -> int:
        """Complete waiting jobs whose start deadline passed; returns how many."""
        ...

    def sweep(self, older_than_s: float) -> int:
        """Delete jobs that completed longer ago than this (not before their webhook is in the
        outbox), and failed deliveries as old; returns how many jobs."""
        ...

    # --- webhook outbox ---
    def webhooks_due(self, limit: int = 100) -> list[Job]:
        """Completed jobs with a webhook URL and no delivery in the outbox yet."""
        ...

    def add_delivery(self, delivery: Delivery, *, not_before: float | None = None) -> bool:
        """Put a delivery in the outbox (due at `not_before`, default now) and mark its job's
        webhook as handed over, in one step; False if the request has one already."""
        ...

    def claim_deliveries(
        self, limit: int, *, lease_s: float, now: float | None = None
    ) -> list[Delivery]:
        """Up to `limit` due deliveries, each leased for `lease_s` (a sender that dies leaves
        it due again after the lease)."""
        ...

    def finish_delivery(
        self, request_id: str, *, error: str | None = None, retry_at: float | None = None
    ) -> None:
        """After an attempt: delivered (no `error`) leaves the outbox; a failure counts an
        attempt and is retried at `retry_at`, or given up for good when that is None."""
        ...

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due; None when none is pending."""
        ...

    def delivery_counts(self) -> dict[str, int]:
        """Outbox entries per state (`pending`, `failed`); delivered ones are gone."""
        ...

    def close(self) -> None: ...
