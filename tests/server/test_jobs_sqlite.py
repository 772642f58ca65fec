"""SqliteJobStore beyond the contract (tests/contract): WAL, reopening, the schema-1 upgrade."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from server.jobs import JobStatus, NewJob, SqliteJobStore
from server.jobs.sqlite import SCHEMA_VERSION


def new(i: int = 0, **kw) -> NewJob:
    return NewJob(app="fal-ai/ovi", input={"prompt": f"p{i}"}, **kw)


def test_wal_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "jobs.sqlite3"
    s = SqliteJobStore(path)
    assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ids = [s.submit(new(i)).id for i in range(3)]
    s.close()
    s = SqliteJobStore(path)
    assert [s.queue_position(i) for i in ids] == [0, 1, 2]
    assert s.claim("w").id == ids[0]
    s.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="schema"):
        SqliteJobStore(path)


def test_upgrades_a_schema_1_file_with_image_blobs(tmp_path: Path) -> None:
    """A file from before input files moved to the storage opens; its queued jobs keep their
    place, and a queued image-to-video job has no input file (its worker fails it clearly)."""
    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            app TEXT NOT NULL, input TEXT NOT NULL, status TEXT NOT NULL,
            priority INTEGER NOT NULL, created_at REAL NOT NULL, base_url TEXT NOT NULL DEFAULT '',
            started_at REAL, finished_at REAL, start_deadline REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
            worker_id TEXT, result TEXT, error TEXT, metrics TEXT NOT NULL DEFAULT '{}',
            webhook_url TEXT, gateway_request_id TEXT, user_id TEXT NOT NULL DEFAULT 'local',
            webhook_state TEXT);
        CREATE TABLE job_attachments (job_id TEXT NOT NULL, name TEXT NOT NULL,
            data BLOB NOT NULL, PRIMARY KEY (job_id, name));
        PRAGMA user_version=1;
        """
    )
    i2v = json.dumps({"prompt": "x", "image_url": "data:,"})
    conn.execute(
        "INSERT INTO jobs (id, app, input, status, priority, created_at)"
        " VALUES ('old', 'fal-ai/ovi/image-to-video', ?, 'IN_QUEUE', 0, 1.0)",
        (i2v,),
    )
    conn.execute("INSERT INTO job_attachments VALUES ('old', 'image', x'89504e47')")
    conn.commit()
    conn.close()

    store = SqliteJobStore(path)
    newer = store.submit(new())
    assert store.queue_position("old") == 0 and store.queue_position(newer.id) == 1
    old = store.claim("w")
    assert old.id == "old" and old.input_files == {} and old.status is JobStatus.IN_PROGRESS
    tables = {r[0] for r in store._conn.execute("SELECT name FROM sqlite_master")}
    assert "job_attachments" not in tables
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
