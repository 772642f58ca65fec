"""`JobStore` on one SQLite file in WAL mode: the default, durable, multi-process queue.

The API process and the worker processes each open the file; every state change is one
`BEGIN IMMEDIATE` transaction, so a claim, a cancel and a completion never interleave. Queued
jobs survive a restart; queue order is (priority, insertion sequence), so a job re-queued after
its worker died keeps its place at the front. The webhook outbox is a table of the same file.

Schema 1 (before input files moved to `server.storage`) kept input images as blobs; opening such a
file adds the new columns and drops the blobs: an image-to-video job still queued from then fails
with a clear error when a worker claims it (see `server.worker.run_job`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from server.jobs.base import (
    CANCELLED,
    PRIORITIES,
    START_TIMEOUT,
    WORKER_LOST,
    Delivery,
    Job,
    JobError,
    JobStatus,
    LogEntry,
    NewJob,
    Outcome,
    WorkerInfo,
    iso_timestamp,
)
from server.jobs.errors import JobAlreadyCompletedError, JobNotFoundError, QueueFullError

SCHEMA_VERSION = 2
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
    webhook_state TEXT,  -- NULL: none, 'due': to hand to the outbox, 'sent': in the outbox
    input_files TEXT NOT NULL DEFAULT '{}'
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
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    heartbeat_at REAL NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    job_id TEXT,
    detail TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    request_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    user_id TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- 'pending' or 'failed' (delivered: deleted)
    last_error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_at);
"""
_MIGRATIONS = {  # from schema 1: input files are storage keys now, not blobs here
    "input_files": "ALTER TABLE jobs ADD COLUMN input_files TEXT NOT NULL DEFAULT '{}'",
}
_WORKER_MIGRATIONS = {  # workers heartbeat a metrics snapshot (server.metrics)
    "metrics": "ALTER TABLE workers ADD COLUMN metrics TEXT NOT NULL DEFAULT '[]'",
}
_WAITING = JobStatus.IN_QUEUE.value
_RUNNING = JobStatus.IN_PROGRESS.value
_DONE = JobStatus.COMPLETED.value
_JOB_FIELDS = tuple(f.name for f in fields(Job))
_JSON_FIELDS = ("input", "result", "metrics", "input_files")
# Every column a Job reads but the input (a status poll must not read a 10 MB prompt).
_COLUMNS_NO_INPUT = ", ".join(n for n in _JOB_FIELDS if n != "input")
_HELD = "SELECT cancel_requested FROM jobs WHERE id=? AND status=? AND worker_id=?"
_REQUEUE = "UPDATE jobs SET status=?, started_at=NULL, worker_id=NULL, start_deadline=NULL"


class DatabaseCorruptError(ValueError):
    """The job database file is not a healthy SQLite job store (`check_database`)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"job database {path} is damaged ({problem})")


def check_database(path: str | Path) -> int:
    """`PRAGMA quick_check` and the stored schema version of an existing job database: its
    schema version (0: an empty file), or `DatabaseCorruptError`; a ValueError for a schema
    newer than this server's. Opens nothing that is not there already."""
    path = Path(path)
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=10)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # not a database, malformed, truncated
        raise DatabaseCorruptError(path, str(exc)) from None
    problems = [" ".join(str(r[0]).split()) for r in rows if r[0] != "ok"]  # one line each
    if problems:
        more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
        raise DatabaseCorruptError(path, "; ".join(problems[:2]) + more)
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path} has job-store schema {version}; this server knows {SCHEMA_VERSION}"
            " (written by a newer version)"
        )
    return version


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
            columns = {r["name"] for r in c.execute("PRAGMA table_info(jobs)")}
            for column, statement in _MIGRATIONS.items():
                if column not in columns:
                    c.execute(statement)
            columns = {r["name"] for r in c.execute("PRAGMA table_info(workers)")}
            for column, statement in _WORKER_MIGRATIONS.items():
                if column not in columns:
                    c.execute(statement)
            c.execute("DROP TABLE IF EXISTS job_attachments")
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"SqliteJobStore({str(self.path)!r})"

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
        present = row.keys()
        values = {name: row[name] if name in present else None for name in _JOB_FIELDS}
        for name in _JSON_FIELDS:
            values[name] = json.loads(values[name]) if values[name] else None
        error = json.loads(row["error"]) if row["error"] else None
        return Job(
            **{
                **values,
                "status": JobStatus(row["status"]),
                "priority": PRIORITIES[row["priority"]],
                "cancel_requested": bool(row["cancel_requested"]),
                "error": JobError.from_dict(error) if error else None,
                "input": values["input"] or {},
                "metrics": values["metrics"] or {},
                "input_files": values["input_files"] or {},
            }
        )

    def _row(self, c: sqlite3.Connection, request_id: str) -> Job:
        return self._job(c.execute("SELECT * FROM jobs WHERE id=?", (request_id,)).fetchone())

    @staticmethod
    def _finish(c: sqlite3.Connection, request_id: str, outcome: Outcome) -> None:
        c.execute(
            "UPDATE jobs SET status=?, finished_at=?, result=?, error=?,"
            " metrics=COALESCE(?, metrics),"
            " webhook_state=CASE WHEN webhook_url IS NULL THEN NULL ELSE 'due' END"
            " WHERE id=?",
            (
                _DONE,
                time.time(),
                json.dumps(outcome.result) if outcome.result is not None else None,
                json.dumps(outcome.error.to_dict()) if outcome.error is not None else None,
                json.dumps(outcome.metrics) if outcome.metrics is not None else None,
                request_id,
            ),
        )

    @staticmethod
    def _log(c: sqlite3.Connection, request_id: str, message: str, level: str, source: str) -> None:
        c.execute(
            "INSERT INTO job_logs (job_id, idx, ts, level, source, message)"
            " SELECT ?, COALESCE(MAX(idx) + 1, 0), ?, ?, ?, ? FROM job_logs WHERE job_id=?",
            (request_id, time.time(), level, source, message, request_id),
        )

    def _fail(self, c: sqlite3.Connection, request_id: str, error: JobError, log: str) -> None:
        self._finish(c, request_id, Outcome(error=error))
        self._log(c, request_id, log, "ERROR" if error is not CANCELLED else "INFO", "SYSTEM")

    def _expire_overdue(self, c: sqlite3.Connection) -> int:
        rows = c.execute(
            "SELECT id FROM jobs WHERE status=? AND start_deadline IS NOT NULL AND start_deadline<?",
            (_WAITING, time.time()),
        ).fetchall()
        for row in rows:
            self._fail(c, row["id"], START_TIMEOUT, START_TIMEOUT.message)
        return len(rows)

    def _held(self, c: sqlite3.Connection, request_id: str, worker_id: str) -> sqlite3.Row | None:
        """The job's row if this worker holds it (IN_PROGRESS, claimed by it), else None."""
        return c.execute(_HELD, (request_id, _RUNNING, worker_id)).fetchone()

    # --- routes ---

    def submit(self, job: NewJob, *, max_queue_size: int | None = None) -> Job:
        now = time.time()
        request_id = job.request_id or str(uuid.uuid4())
        deadline = now + job.start_timeout_s if job.start_timeout_s else None
        gateway_id = str(uuid.uuid4()) if job.webhook_url else None
        with self._tx() as c:
            if max_queue_size is not None:  # counts at most max_queue_size index entries
                waiting = c.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE status=? LIMIT ?)",
                    (_WAITING, max_queue_size),
                )
                if waiting.fetchone()[0] >= max_queue_size:
                    raise QueueFullError(request_id)
            c.execute(
                "INSERT INTO jobs (id, app, input, status, priority, created_at, base_url,"
                " start_deadline, webhook_url, gateway_request_id, user_id, input_files)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    json.dumps(job.input_files),
                ),
            )
            return self._row(c, request_id)

    def get(self, request_id: str, *, with_input: bool = True) -> Job:
        columns = "*" if with_input else _COLUMNS_NO_INPUT
        rows = self._read(f"SELECT {columns} FROM jobs WHERE id=?", (request_id,))
        if not rows:
            raise JobNotFoundError(request_id)
        job = self._job(rows[0])
        if (
            job.status is JobStatus.IN_QUEUE
            and job.start_deadline is not None
            and job.start_deadline < time.time()
        ):
            self.expire_overdue()
            return self.get(request_id, with_input=with_input)
        return job

    def queue_position(self, request_id: str) -> int | None:
        rows = self._read(  # one read: None unless the job is waiting, else the count ahead
            "SELECT (SELECT COUNT(*) FROM jobs AS ahead WHERE ahead.status=me.status"
            " AND (ahead.priority<me.priority"
            " OR (ahead.priority=me.priority AND ahead.seq<me.seq)))"
            " FROM jobs AS me WHERE me.id=? AND me.status=?",
            (request_id, _WAITING),
        )
        return int(rows[0][0]) if rows else None

    def logs(self, request_id: str, *, since: int = 0) -> list[LogEntry]:
        rows = self._read(
            "SELECT ts, level, source, message FROM job_logs WHERE job_id=? AND idx>=?"
            " ORDER BY idx",
            (request_id, since),
        )
        return [
            LogEntry(r["message"], r["level"], r["source"], iso_timestamp(r["ts"])) for r in rows
        ]

    def cancel(self, request_id: str) -> Job:
        with self._tx() as c:
            self._expire_overdue(c)
            row = c.execute("SELECT status FROM jobs WHERE id=?", (request_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(request_id)
            if row["status"] == _DONE:
                raise JobAlreadyCompletedError(request_id)
            if row["status"] == _WAITING:
                self._fail(c, request_id, CANCELLED, "Cancelled while in the queue")
            else:
                c.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (request_id,))
                self._log(c, request_id, "Cancellation requested", "INFO", "SYSTEM")
            return self._row(c, request_id)

    def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE status IN (?, ?) GROUP BY status",
            (_WAITING, _RUNNING),
        )
        counts = {_WAITING: 0, _RUNNING: 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    def recent(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        newest_first: bool = True,
        user_id: str | None = None,
    ) -> list[Job]:
        where, params = [], []
        if after is not None:
            cursor = self._read("SELECT seq FROM jobs WHERE id=?", (after,))
            if not cursor:
                raise JobNotFoundError(after)
            where.append("seq < ?" if newest_first else "seq > ?")
            params.append(cursor[0]["seq"])
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        return [self._job(r) for r in self._read(sql, (*params, max(0, limit)))]

    def delete(self, request_id: str) -> Job:
        with self._tx() as c:
            row = c.execute("SELECT * FROM jobs WHERE id=?", (request_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(request_id)
            c.execute("DELETE FROM jobs WHERE id=?", (request_id,))
            c.execute("DELETE FROM job_logs WHERE job_id=?", (request_id,))
            c.execute("DELETE FROM webhook_deliveries WHERE request_id=?", (request_id,))
            c.execute("UPDATE workers SET job_id=NULL WHERE job_id=?", (request_id,))
            return self._job(row)

    def queue_depths(self) -> dict[str, int]:
        rows = self._read(
            "SELECT priority, COUNT(*) AS n FROM jobs WHERE status=? GROUP BY priority", (_WAITING,)
        )
        depths = dict.fromkeys(PRIORITIES, 0)
        depths.update({PRIORITIES[r["priority"]]: r["n"] for r in rows})
        return depths

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
            return self._row(c, row["id"])

    def append_log(
        self, request_id: str, message: str, *, level: str = "INFO", source: str = "USER"
    ) -> None:
        with self._tx() as c:
            self._log(c, request_id, message, level, source)

    def is_cancel_requested(self, request_id: str) -> bool:
        rows = self._read("SELECT cancel_requested FROM jobs WHERE id=?", (request_id,))
        return not rows or bool(rows[0]["cancel_requested"])  # deleted: stop too

    def complete(self, request_id: str, worker_id: str, outcome: Outcome) -> bool:
        with self._tx() as c:
            if self._held(c, request_id, worker_id) is None:
                return False
            self._finish(c, request_id, outcome)
            c.execute("UPDATE workers SET job_id=NULL WHERE id=?", (worker_id,))
        return True

    def release(self, request_id: str, worker_id: str) -> bool:
        with self._tx() as c:
            row = self._held(c, request_id, worker_id)
            if row is None:
                return False
            if row["cancel_requested"]:
                self._finish(c, request_id, Outcome(error=CANCELLED))
            else:
                c.execute(
                    _REQUEUE + ", attempts=MAX(attempts-1, 0) WHERE id=?", (_WAITING, request_id)
                )
                self._log(c, request_id, "Server stopping: back in the queue", "INFO", "SYSTEM")
            c.execute("UPDATE workers SET job_id=NULL WHERE id=?", (worker_id,))
        return True

    def heartbeat(self, info: WorkerInfo) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO workers"
                " (id, state, heartbeat_at, host, pid, job_id, detail, started_at, metrics)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state=excluded.state,"
                " heartbeat_at=excluded.heartbeat_at, host=excluded.host, pid=excluded.pid,"
                " detail=excluded.detail, metrics=excluded.metrics",
                (
                    info.id,
                    info.state,
                    info.heartbeat_at,
                    info.host,
                    info.pid,
                    info.job_id,
                    info.detail,
                    info.started_at or info.heartbeat_at,
                    json.dumps(info.metrics),
                ),
            )

    def workers(self) -> list[WorkerInfo]:
        rows = self._read("SELECT * FROM workers ORDER BY started_at, id")
        return [
            WorkerInfo(**{**dict(r), "metrics": json.loads(r["metrics"] or "[]")}) for r in rows
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
                    self._finish(c, request_id, Outcome(error=CANCELLED))
                elif row["attempts"] < max_attempts:
                    c.execute(_REQUEUE + " WHERE id=?", (_WAITING, request_id))
                    attempt = f"attempt {row['attempts'] + 1} of {max_attempts}"
                    self._log(
                        c, request_id, f"Worker lost; re-queued ({attempt})", "WARNING", "SYSTEM"
                    )
                else:
                    self._fail(c, request_id, WORKER_LOST, WORKER_LOST.message)
                recovered.append(request_id)
            c.execute(f"DELETE FROM workers WHERE id IN ({marks})", tuple(worker_ids))
        return recovered

    def stale_workers(self, older_than_s: float) -> list[str]:
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
                c.execute("DELETE FROM jobs WHERE id=?", (request_id,))
            c.execute(
                "DELETE FROM webhook_deliveries WHERE state='failed' AND created_at<?", (cutoff,)
            )
        return len(ids)

    # --- webhook outbox ---

    def webhooks_due(self, limit: int = 100) -> list[Job]:
        rows = self._read(
            "SELECT * FROM jobs WHERE webhook_state='due' ORDER BY finished_at LIMIT ?", (limit,)
        )
        return [self._job(r) for r in rows]

    def add_delivery(self, delivery: Delivery, *, not_before: float | None = None) -> bool:
        now = time.time()
        with self._tx() as c:
            added = c.execute(
                "INSERT OR IGNORE INTO webhook_deliveries"
                " (request_id, url, user_id, body, attempts, next_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.request_id,
                    delivery.url,
                    delivery.user_id,
                    sqlite3.Binary(delivery.body),
                    delivery.attempts,
                    now if not_before is None else not_before,
                    now,
                ),
            ).rowcount
            c.execute(
                "UPDATE jobs SET webhook_state='sent' WHERE id=? AND webhook_state='due'",
                (delivery.request_id,),
            )
        return bool(added)

    def claim_deliveries(
        self, limit: int, *, lease_s: float, now: float | None = None
    ) -> list[Delivery]:
        now = time.time() if now is None else now
        with self._tx() as c:
            rows = c.execute(
                "SELECT request_id, url, body, user_id, attempts FROM webhook_deliveries"
                " WHERE state='pending' AND next_at<=? ORDER BY next_at LIMIT ?",
                (now, limit),
            ).fetchall()
            for row in rows:
                c.execute(
                    "UPDATE webhook_deliveries SET next_at=? WHERE request_id=?",
                    (now + lease_s, row["request_id"]),
                )
        return [Delivery(**{**dict(r), "body": bytes(r["body"])}) for r in rows]

    def finish_delivery(
        self, request_id: str, *, error: str | None = None, retry_at: float | None = None
    ) -> None:
        with self._tx() as c:
            if error is None:
                c.execute("DELETE FROM webhook_deliveries WHERE request_id=?", (request_id,))
                return
            c.execute(
                "UPDATE webhook_deliveries SET attempts=attempts+1, last_error=?,"
                " state=?, next_at=COALESCE(?, next_at) WHERE request_id=?",
                (error, "pending" if retry_at is not None else "failed", retry_at, request_id),
            )

    def next_delivery_at(self) -> float | None:
        rows = self._read("SELECT MIN(next_at) FROM webhook_deliveries WHERE state='pending'")
        return None if rows[0][0] is None else float(rows[0][0])

    def delivery_counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) FROM webhook_deliveries GROUP BY state")
        return {state: n for state, n in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
