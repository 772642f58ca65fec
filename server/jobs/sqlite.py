"""`JobStore` on one SQLite file in WAL mode: the default, durable, multi-process queue.

The API process and the worker processes each open the file; every state change is one
`BEGIN IMMEDIATE` transaction, so a claim, a cancel and a completion never interleave. Queued
jobs survive a restart; queue order is (priority, insertion sequence), so a job re-queued after
its worker died keeps its place at the front.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.errors import AlreadyCompletedError, QueueFullError, RequestNotFoundError
from server.jobs.base import (
    CANCELLED,
    PRIORITIES,
    START_TIMEOUT,
    WORKER_LOST,
    Job,
    JobError,
    JobStatus,
    LogEntry,
    NewJob,
    WorkerInfo,
    iso_timestamp,
)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    input TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_at REAL NOT NULL,
    base_url TEXT NOT NULL DEFAULT '',
    started_at REAL,
    finished_at REAL,
    start_deadline REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    result TEXT,
    error TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    webhook_url TEXT,
    gateway_request_id TEXT,
    user_id TEXT NOT NULL DEFAULT 'local',
    webhook_state TEXT  -- NULL: none, 'due': to hand out, 'sent': handed to the dispatcher
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority, seq);
CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_state);
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    ts REAL NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS job_attachments (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    heartbeat_at REAL NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    job_id TEXT,
    detail TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL DEFAULT 0
);
"""
_WAITING = JobStatus.IN_QUEUE.value
_RUNNING = JobStatus.IN_PROGRESS.value
_DONE = JobStatus.COMPLETED.value


class SqliteJobStore:
    """SQLite implementation of `server.jobs.base.JobStore`; one connection per instance."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        with self._tx() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has job-store schema {version}; this server knows {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):  # executescript would commit mid-transaction
                if statement.strip():
                    c.execute(statement)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # --- plumbing ---

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the write lock up front)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        error = json.loads(row["error"]) if row["error"] else None
        return Job(
            id=row["id"],
            app=row["app"],
            input=json.loads(row["input"]),
            status=JobStatus(row["status"]),
            priority=PRIORITIES[row["priority"]],  # type: ignore[arg-type]
            created_at=row["created_at"],
            base_url=row["base_url"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            start_deadline=row["start_deadline"],
            cancel_requested=bool(row["cancel_requested"]),
            attempts=row["attempts"],
            worker_id=row["worker_id"],
            result=json.loads(row["result"]) if row["result"] else None,
            error=JobError.from_dict(error) if error else None,
            metrics=json.loads(row["metrics"] or "{}"),
            webhook_url=row["webhook_url"],
            gateway_request_id=row["gateway_request_id"],
            user_id=row["user_id"],
        )

    @staticmethod
    def _finish(
        c: sqlite3.Connection,
        request_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: JobError | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        c.execute(
            "UPDATE jobs SET status=?, finished_at=?, result=?, error=?,"
            " metrics=COALESCE(?, metrics),"
            " webhook_state=CASE WHEN webhook_url IS NULL THEN NULL ELSE 'due' END"
            " WHERE id=?",
            (
                _DONE,
                time.time(),
                json.dumps(result) if result is not None else None,
                json.dumps(error.to_dict()) if error is not None else None,
                json.dumps(metrics) if metrics is not None else None,
                request_id,
            ),
        )
        c.execute("DELETE FROM job_attachments WHERE job_id=?", (request_id,))

    @staticmethod
    def _log(c: sqlite3.Connection, request_id: str, message: str, level: str, source: str) -> None:
        c.execute(
            "INSERT INTO job_logs (job_id, idx, ts, level, source, message)"
            " SELECT ?, COALESCE(MAX(idx) + 1, 0), ?, ?, ?, ? FROM job_logs WHERE job_id=?",
            (request_id, time.time(), level, source, message, request_id),
        )

    def _expire_overdue(self, c: sqlite3.Connection) -> int:
        rows = c.execute(
            "SELECT id FROM jobs WHERE status=? AND start_deadline IS NOT NULL AND start_deadline<?",
            (_WAITING, time.time()),
        ).fetchall()
        for row in rows:
            self._finish(c, row["id"], error=START_TIMEOUT)
            self._log(c, row["id"], START_TIMEOUT.message, "ERROR", "SYSTEM")
        return len(rows)

    # --- routes ---

    def submit(self, job: NewJob, *, max_queue_size: int | None = None) -> Job:
        now = time.time()
        request_id = job.request_id or str(uuid.uuid4())
        deadline = now + job.start_timeout_s if job.start_timeout_s else None
        gateway_id = str(uuid.uuid4()) if job.webhook_url else None
        with self._tx() as c:
            if max_queue_size is not None:
                waiting = c.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (_WAITING,))
                if waiting.fetchone()[0] >= max_queue_size:
                    raise QueueFullError()
            c.execute(
                "INSERT INTO jobs (id, app, input, status, priority, created_at, base_url,"
                " start_deadline, webhook_url, gateway_request_id, user_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    job.app,
                    json.dumps(job.input),
                    _WAITING,
                    PRIORITIES.index(job.priority),
                    now,
                    job.base_url,
                    deadline,
                    job.webhook_url,
                    gateway_id,
                    job.user_id,
                ),
            )
            for name, data in job.attachments.items():
                c.execute(
                    "INSERT INTO job_attachments (job_id, name, data) VALUES (?, ?, ?)",
                    (request_id, name, sqlite3.Binary(data)),
                )
            row = c.execute("SELECT * FROM jobs WHERE id=?", (request_id,)).fetchone()
        return self._job(row)

    def get(self, request_id: str) -> Job:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (request_id,))
        if not rows:
            raise RequestNotFoundError(request_id=None)
        job = self._job(rows[0])
        if (
            job.status is JobStatus.IN_QUEUE
            and job.start_deadline is not None
            and job.start_deadline < time.time()
        ):
            self.expire_overdue()
            return self.get(request_id)
        return job

    def queue_position(self, request_id: str) -> int | None:
        rows = self._read(
            "SELECT COUNT(*) FROM jobs AS ahead, jobs AS me WHERE me.id=? AND me.status=?"
            " AND ahead.status=? AND (ahead.priority<me.priority"
            " OR (ahead.priority=me.priority AND ahead.seq<me.seq))",
            (request_id, _WAITING, _WAITING),
        )
        me = self._read("SELECT status FROM jobs WHERE id=?", (request_id,))
        if not me or me[0]["status"] != _WAITING:
            return None
        return int(rows[0][0])

    def logs(self, request_id: str, *, since: int = 0) -> list[LogEntry]:
        rows = self._read(
            "SELECT ts, level, source, message FROM job_logs WHERE job_id=? AND idx>=?"
            " ORDER BY idx",
            (request_id, since),
        )
        return [
            LogEntry(
                message=r["message"],
                level=r["level"],
                source=r["source"],
                timestamp=iso_timestamp(r["ts"]),
            )
            for r in rows
        ]

    def cancel(self, request_id: str) -> Job:
        with self._tx() as c:
            self._expire_overdue(c)
            row = c.execute("SELECT status FROM jobs WHERE id=?", (request_id,)).fetchone()
            if row is None:
                raise RequestNotFoundError()
            if row["status"] == _DONE:
                raise AlreadyCompletedError(request_id=request_id)
            if row["status"] == _WAITING:
                self._finish(c, request_id, error=CANCELLED)
                self._log(c, request_id, "Cancelled while in the queue", "INFO", "SYSTEM")
            else:
                c.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (request_id,))
                self._log(c, request_id, "Cancellation requested", "INFO", "SYSTEM")
            row = c.execute("SELECT * FROM jobs WHERE id=?", (request_id,)).fetchone()
        return self._job(row)

    def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE status IN (?, ?) GROUP BY status",
            (_WAITING, _RUNNING),
        )
        counts = {_WAITING: 0, _RUNNING: 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    def take_webhooks(self, limit: int = 100) -> list[Job]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT * FROM jobs WHERE webhook_state='due' ORDER BY finished_at LIMIT ?",
                (limit,),
            ).fetchall()
            for row in rows:
                c.execute("UPDATE jobs SET webhook_state='sent' WHERE id=?", (row["id"],))
        return [self._job(r) for r in rows]

    # --- workers ---

    def claim(self, worker_id: str) -> Job | None:
        # A cheap read first: idle workers poll, and must not take the write lock each time.
        if not self._read("SELECT 1 FROM jobs WHERE status=? LIMIT 1", (_WAITING,)):
            return None
        with self._tx() as c:
            self._expire_overdue(c)
            row = c.execute(
                "SELECT id FROM jobs WHERE status=? ORDER BY priority, seq LIMIT 1", (_WAITING,)
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET status=?, started_at=?, attempts=attempts+1, worker_id=?"
                " WHERE id=?",
                (_RUNNING, time.time(), worker_id, row["id"]),
            )
            c.execute("UPDATE workers SET job_id=? WHERE id=?", (row["id"], worker_id))
            job = c.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone()
        return self._job(job)

    def attachment(self, request_id: str, name: str) -> bytes | None:
        rows = self._read(
            "SELECT data FROM job_attachments WHERE job_id=? AND name=?", (request_id, name)
        )
        return bytes(rows[0]["data"]) if rows else None

    def append_log(
        self, request_id: str, message: str, *, level: str = "INFO", source: str = "USER"
    ) -> None:
        with self._tx() as c:
            self._log(c, request_id, message, level, source)

    def is_cancel_requested(self, request_id: str) -> bool:
        rows = self._read("SELECT cancel_requested FROM jobs WHERE id=?", (request_id,))
        return bool(rows and rows[0]["cancel_requested"])

    def complete(
        self,
        request_id: str,
        worker_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: JobError | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> bool:
        with self._tx() as c:
            row = c.execute(
                "SELECT 1 FROM jobs WHERE id=? AND status=? AND worker_id=?",
                (request_id, _RUNNING, worker_id),
            ).fetchone()
            if row is None:
                return False
            self._finish(c, request_id, result=result, error=error, metrics=metrics)
            c.execute("UPDATE workers SET job_id=NULL WHERE id=?", (worker_id,))
        return True

    def release(self, request_id: str, worker_id: str) -> bool:
        with self._tx() as c:
            row = c.execute(
                "SELECT cancel_requested FROM jobs WHERE id=? AND status=? AND worker_id=?",
                (request_id, _RUNNING, worker_id),
            ).fetchone()
            if row is None:
                return False
            if row["cancel_requested"]:
                self._finish(c, request_id, error=CANCELLED)
            else:
                c.execute(
                    "UPDATE jobs SET status=?, started_at=NULL, worker_id=NULL,"
                    " attempts=MAX(attempts-1, 0), start_deadline=NULL WHERE id=?",
                    (_WAITING, request_id),
                )
                self._log(c, request_id, "Server stopping: back in the queue", "INFO", "SYSTEM")
            c.execute("UPDATE workers SET job_id=NULL WHERE id=?", (worker_id,))
        return True

    def heartbeat(self, info: WorkerInfo) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO workers (id, state, heartbeat_at, host, pid, job_id, detail, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state=excluded.state,"
                " heartbeat_at=excluded.heartbeat_at, host=excluded.host, pid=excluded.pid,"
                " detail=excluded.detail",
                (
                    info.id,
                    info.state,
                    info.heartbeat_at,
                    info.host,
                    info.pid,
                    info.job_id,
                    info.detail,
                    info.started_at or info.heartbeat_at,
                ),
            )

    def workers(self) -> list[WorkerInfo]:
        rows = self._read("SELECT * FROM workers ORDER BY started_at, id")
        return [
            WorkerInfo(
                id=r["id"],
                state=r["state"],
                heartbeat_at=r["heartbeat_at"],
                host=r["host"],
                pid=r["pid"],
                job_id=r["job_id"],
                detail=r["detail"],
                started_at=r["started_at"],
            )
            for r in rows
        ]

    def remove_worker(self, worker_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM workers WHERE id=?", (worker_id,))

    # --- maintenance ---

    def recover(self, worker_ids: list[str], *, max_attempts: int) -> list[str]:
        if not worker_ids:
            return []
        marks = ",".join("?" * len(worker_ids))
        recovered: list[str] = []
        with self._tx() as c:
            rows = c.execute(
                f"SELECT id, attempts, cancel_requested FROM jobs"
                f" WHERE status=? AND worker_id IN ({marks})",
                (_RUNNING, *worker_ids),
            ).fetchall()
            for row in rows:
                request_id = row["id"]
                if row["cancel_requested"]:
                    self._finish(c, request_id, error=CANCELLED)
                elif row["attempts"] < max_attempts:
                    c.execute(
                        "UPDATE jobs SET status=?, started_at=NULL, worker_id=NULL,"
                        " start_deadline=NULL WHERE id=?",
                        (_WAITING, request_id),
                    )
                    self._log(
                        c,
                        request_id,
                        f"Worker lost; re-queued (attempt {row['attempts'] + 1} of {max_attempts})",
                        "WARNING",
                        "SYSTEM",
                    )
                else:
                    self._finish(c, request_id, error=WORKER_LOST)
                    self._log(c, request_id, WORKER_LOST.message, "ERROR", "SYSTEM")
                recovered.append(request_id)
            c.execute(f"DELETE FROM workers WHERE id IN ({marks})", tuple(worker_ids))
        return recovered

    def stale_workers(self, older_than_s: float) -> list[str]:
        """Stale heartbeats, plus ids holding running jobs with no worker row at all."""
        rows = self._read(
            "SELECT id FROM workers WHERE heartbeat_at<?"
            " UNION SELECT DISTINCT worker_id FROM jobs WHERE status=? AND worker_id IS NOT NULL"
            " AND worker_id NOT IN (SELECT id FROM workers)",
            (time.time() - older_than_s, _RUNNING),
        )
        return [r[0] for r in rows]

    def expire_overdue(self) -> int:
        with self._tx() as c:
            return self._expire_overdue(c)

    def sweep(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        with self._tx() as c:
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT id FROM jobs WHERE status=? AND finished_at<? AND"
                    " (webhook_state IS NULL OR webhook_state='sent')",
                    (_DONE, cutoff),
                ).fetchall()
            ]
            for request_id in ids:
                c.execute("DELETE FROM job_logs WHERE job_id=?", (request_id,))
                c.execute("DELETE FROM job_attachments WHERE job_id=?", (request_id,))
                c.execute("DELETE FROM jobs WHERE id=?", (request_id,))
        return len(ids)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
