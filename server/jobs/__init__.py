"""Job store: the durable queue shared by the API and the workers (see `base.JobStore`)."""

from __future__ import annotations

from server.jobs.base import Job, JobError, JobStatus, JobStore, LogEntry, NewJob, WorkerInfo
from server.jobs.sqlite import SqliteJobStore

__all__ = [
    "Job",
    "JobError",
    "JobStatus",
    "JobStore",
    "LogEntry",
    "NewJob",
    "SqliteJobStore",
    "WorkerInfo",
    "open_store",
]


def open_store(url_or_path: str) -> JobStore:
    """Open the store a settings value names: a SQLite file path (or `sqlite:///path`)."""
    if url_or_path.startswith("sqlite:///"):
        url_or_path = url_or_path.removeprefix("sqlite:///")
    elif "://" in url_or_path:
        raise ValueError(f"unsupported job store {url_or_path!r}; only SQLite files for now")
    return SqliteJobStore(url_or_path)
