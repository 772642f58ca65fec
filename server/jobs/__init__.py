"""Job store: the durable queue shared by the API and the workers (see `base.JobStore`).

`open_store(url)` is the only way the API, the workers and the maintenance loop get one: the
`job_store` setting names it by URL, and each backend is one module plus one entry in `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from server.jobs.base import (
    Delivery,
    Job,
    JobError,
    JobStatus,
    JobStore,
    LogEntry,
    NewJob,
    Outcome,
    WorkerInfo,
)
from server.jobs.errors import (
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobStoreError,
    QueueFullError,
    StoreUnavailableError,
)
from server.jobs.sqlite import SqliteJobStore

__all__ = [
    "BACKENDS",
    "Delivery",
    "Job",
    "JobAlreadyCompletedError",
    "JobError",
    "JobNotFoundError",
    "JobStatus",
    "JobStore",
    "JobStoreError",
    "LogEntry",
    "NewJob",
    "Outcome",
    "QueueFullError",
    "SqliteJobStore",
    "StoreUnavailableError",
    "WorkerInfo",
    "open_store",
    "sqlite_path",
]


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///relative/path` or `sqlite:////absolute/path` URL (SQLAlchemy's
    spelling: the path follows the third slash)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ValueError(f"a SQLite job store URL is sqlite:///path/to/jobs.sqlite3, not {url!r}")
    path = unquote(parts.path[1:])
    if not path or path.endswith("/") or parts.query or parts.fragment:
        raise ValueError(f"a SQLite job store URL names a file: sqlite:///path, not {url!r}")
    return Path(path)


def _redis(url: str, **options: float) -> JobStore:
    from server.jobs.redis import RedisJobStore  # the redis client loads only when used

    return RedisJobStore(url, **options)


# Each backend: URL plus options (`retry_s`: how long a lost connection is retried before
# `StoreUnavailableError`; backends that never lose a connection ignore it).
BACKENDS: dict[str, Callable[..., JobStore]] = {
    "sqlite": lambda url, **_: SqliteJobStore(sqlite_path(url)),
    "redis": _redis,
}


def check_store_url(url: str) -> str:
    """`url` if a backend serves its scheme; a ValueError naming the supported ones otherwise."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in BACKENDS:
        supported = ", ".join(f"{name}://" for name in BACKENDS)
        raise ValueError(
            f"unsupported job store URL {url!r}: the supported schemes are {supported}"
        )
    if scheme == "sqlite":
        sqlite_path(url)
    if scheme == "redis":
        from server.jobs.redis import parse_redis_url

        parse_redis_url(url)
    return url


def open_store(url: str, *, retry_s: float | None = None) -> JobStore:
    """Open the job store `url` names, e.g. `sqlite:///data/jobs.sqlite3` (the default) or
    `redis://127.0.0.1:6379/0`. `retry_s`: how long a lost connection is retried before
    `StoreUnavailableError` (the API answers fast with 503; workers wait longer)."""
    options = {} if retry_s is None else {"retry_s": retry_s}
    return BACKENDS[urlsplit(check_store_url(url)).scheme](url, **options)
