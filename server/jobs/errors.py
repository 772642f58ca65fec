"""What a job store refuses, independent of HTTP (`server.errors` maps each to an answer)."""

from __future__ import annotations


class JobStoreError(Exception):
    """Base class of the refusals every `JobStore` backend raises."""

    def __init__(self, request_id: str | None = None, message: str = "") -> None:
        self.request_id = request_id
        super().__init__(message or self.__doc__ or type(self).__name__)


class JobNotFoundError(JobStoreError):
    """No job with this id (never submitted, or swept after its retention time)."""


class JobAlreadyCompletedError(JobStoreError):
    """The job completed already, so it cannot be cancelled."""


class QueueFullError(JobStoreError):
    """`max_queue_size` jobs are waiting already."""


class StoreUnavailableError(JobStoreError):
    """The job store cannot be reached (e.g. its Redis server restarts); retry shortly."""
