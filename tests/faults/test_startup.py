"""Fault injection, starting: a damaged, emptied or deleted job database, a port in use, a model
that cannot load. Refusals are one `error:` line and exit code 2, never a traceback; a server
that starts says in `/health` whether it can work."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import _harness as h
import pytest

from server.jobs import NewJob, SqliteJobStore
from server.lifecycle import check_data_dir
from server.settings import ServerSettings


def ovi_serve(data: Path, *args: str, port: int | None = None) -> subprocess.CompletedProcess:
    """`ovi serve --workers 0` that is expected to refuse to start (bounded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    cmd = [
        sys.executable, "-m", "cli", "serve", "--preset", "tiny_1s", "--workers", "0",
        "--port", str(port or h.free_port()), "--data-dir", str(data), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=h.ROOT, env=env, capture_output=True, text=True, timeout=60)


def used_data_dir(tmp_path: Path, jobs: int = 200) -> Path:
    """A data dir an earlier server used: marker, outputs, a database with `jobs` queued."""
    data = tmp_path / "data"
    check_data_dir(ServerSettings(data_dir=data))
    (data / "files" / "outputs").mkdir(parents=True)
    (data / "files" / "outputs" / "clip.mp4").write_bytes(b"kept")
    store = SqliteJobStore(data / "jobs.sqlite3")
    for i in range(jobs):
        store.submit(NewJob(app="fal-ai/ovi", input={"prompt": "p" * 500, "i": i}))
    store.close()
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return data


def damage_table(path: Path, table: str) -> None:
    """Overwrite the pages of one table (its root page and what follows it)."""
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute(
            "INSERT INTO webhook_deliveries (request_id, url, user_id, body, next_at, created_at)"
            " VALUES ('r', 'http://x', 'u', zeroblob(20000), 0, 0)"
        )
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(path.read_bytes())
    start = (root[0] - 1) * 4096
    raw[start : start + 4096] = os.urandom(4096)
    path.write_bytes(bytes(raw))


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "header":
        raw[:100] = b"\x00garbage" * 12 + b"\x00" * 4
    elif how == "truncated":
        raw = raw[: len(raw) // 3]
    elif how == "pages":  # every page after the first two
        for offset in range(2 * 4096, len(raw), 4096):
            raw[offset + 8 : offset + 200] = os.urandom(192)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["header", "truncated", "pages", "outbox"])
def test_damaged_database_is_refused(tmp_path: Path, how: str) -> None:
    """The start-up check `ovi serve` runs first (in-process here: the same function)."""
    data = used_data_dir(tmp_path)
    if how == "outbox":  # only the webhook outbox's pages
        damage_table(data / "jobs.sqlite3", "webhook_deliveries")
    else:
        damage(data / "jobs.sqlite3", how)
    with pytest.raises(ValueError) as refused:
        check_data_dir(ServerSettings(data_dir=data))
    text = str(refused.value)
    assert "\n" not in text and str(data / "jobs.sqlite3") in text
    assert "ovi serve --recover-db" in text


def test_damaged_database_is_one_error_line_from_the_cli(tmp_path: Path) -> None:
    data = used_data_dir(tmp_path)
    damage(data / "jobs.sqlite3", "pages")
    proc = ovi_serve(data)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert str(data / "jobs.sqlite3") in lines[0] and "ovi serve --recover-db" in lines[0]


def test_recover_db_moves_it_aside_and_keeps_outputs(tmp_path: Path) -> None:
    data = used_data_dir(tmp_path)
    damage(data / "jobs.sqlite3", "pages")
    server = h.start(data, workers=0, args=("--recover-db",), wait_for=("warming",))
    try:
        assert server.submit().status_code == 200  # a new, working database
    finally:
        server.stop(signal.SIGTERM, group=False)
        server.kill()
    assert list(data.glob("jobs.sqlite3.damaged-*"))
    assert (data / "files" / "outputs" / "clip.mp4").read_bytes() == b"kept"


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_lost_database_is_a_loud_warning(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = used_data_dir(tmp_path, jobs=1)
    db = data / "jobs.sqlite3"
    if how == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"")
    check_data_dir(ServerSettings(data_dir=data))
    err = capsys.readouterr().err
    state = "missing" if how == "deleted" else "empty"
    assert f"WARNING: the job database {db} is {state}" in err
    assert "earlier request id will answer 404" in err
    fresh = tmp_path / "fresh"
    check_data_dir(ServerSettings(data_dir=fresh))  # a first start warns of nothing
    assert "WARNING" not in capsys.readouterr().err


def test_port_in_use_is_one_line_before_anything_loads(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        t0 = time.monotonic()
        proc = ovi_serve(tmp_path / "data", port=taken.getsockname()[1])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: cannot listen on 127.0.0.1:" in proc.stderr
    assert time.monotonic() - t0 < 30


def test_model_that_cannot_load_is_failed_not_a_crash_loop(tmp_path: Path) -> None:
    server = h.start(
        tmp_path / "data",
        env={"STANDIN_LOAD_FAIL": "unknown preset 'nope'"},
        wait_for=("failed",),
    )
    try:
        code, body = server.health()
        assert code == 503 and body["status"] == "failed"
        assert any("unknown preset 'nope'" in r for r in body["reasons"]), body
        pids = server.worker_pids()
        r = server.submit()
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "unknown preset 'nope'" in r.json()["detail"]
        time.sleep(2.0)
        assert server.worker_pids() == pids  # the same process: no restart loop
    finally:
        seconds, hung = server.stop(signal.SIGTERM, group=True)
        server.kill()
    assert not hung and seconds < 14
