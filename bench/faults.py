"""Fault figures for `ovi serve`: shutdown seconds and processes left per signal x worker state,
and jobs lost / duplicated / failed across a worker SIGKILL and a graceful group stop.

    python -m bench.faults [--quick] [--only stops|jobs] [--out FILE]

Runs the stand-in server of `tests/faults` (real lifecycle, supervisor, worker processes, store;
the model replaced at `server.worker.load_pipeline`). Point PYTHONPATH at another checkout to
measure that version (how the "before" figures in the README were taken). Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "faults"))

import _harness as h  # noqa: E402

SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def stop_case(root: Path, sig: str, target: str, state: str) -> dict:
    """One stop: `state` is idle, busy (a job mid-run), dead (the idle worker SIGKILLed just
    before) or warming (the model still loading)."""
    env = {"STANDIN_LOAD_S": "60"} if state == "warming" else {"STANDIN_STEP_S": "1"}
    server = h.start(
        root / "data", env=env, wait_for=("warming",) if state == "warming" else ("ready",)
    )
    job = None
    try:
        if state == "busy":
            job = server.submit(steps=50).json()["request_id"]  # 50 s
            server.wait(lambda: server.status(job)["status"] == "IN_PROGRESS", 30, "running")
            time.sleep(0.5)
        elif state == "dead":
            for pid in server.worker_pids():
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        elif state == "warming":
            server.wait(lambda: server.worker_pids(), 30, "a worker process")
            time.sleep(1.0)
        server.worker_pids()
        seconds, hung = server.stop(SIGNALS[sig], group=target == "group", limit=45)
        time.sleep(1.0)  # orphans have a moment to go
        left = server.leftovers()
    finally:
        server.kill()
    out = {
        "case": f"{sig} to {target}, worker {state}",
        "seconds": round(seconds, 1),
        "hung": hung,
        "left": len(left),
    }
    if job is not None:
        import sqlite3

        row = (
            sqlite3.connect(root / "data" / "jobs.sqlite3")
            .execute("SELECT status, attempts FROM jobs WHERE id=?", (job,))
            .fetchone()
        )
        out["job_after"] = {"status": row[0], "attempts": row[1]}
    return out


def _rows(data: Path, query: str, *args: object) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(data / "jobs.sqlite3", timeout=10) as db:
        return db.execute(query, args).fetchall()


def jobs_case(root: Path, count: int = 6) -> dict:
    """Jobs across faults: `count` queued on one worker; the worker running the first is
    SIGKILLed (a crash: one attempt); its replacement takes that job again and the whole process
    group gets SIGTERM mid-job (a graceful stop); a new server on the same data dir runs the
    queue out. Lost: not COMPLETED within 180 s; duplicated: a clip run to its end more than
    once; failed: COMPLETED with an error (its message)."""
    from collections import Counter

    runs, data = root / "runs.txt", root / "data"
    env = {"STANDIN_STEP_S": "0.5", "STANDIN_RUNS": str(runs)}
    server = h.start(data, env=env)
    ids: list[str] = []
    try:
        for i in range(count):
            ids.append(server.submit(steps=8, seed=i, prompt=f"job-{i}").json()["request_id"])

        def holder() -> str | None:
            row = _rows(data, "SELECT status, worker_id FROM jobs WHERE id=?", ids[0])
            return row[0][1] if row and row[0][0] == "IN_PROGRESS" else None

        first = server.wait(holder, 60, "the first job runs")
        time.sleep(1.0)
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)  # a crash mid-job
        server.wait(lambda: holder() not in (None, first), 120, "the replacement runs it")
        time.sleep(1.0)
        stop_s, hung = server.stop(signal.SIGTERM, group=True, limit=45)
    finally:
        server.kill()
    server = h.start(data, env=env)
    try:
        try:
            server.wait(
                lambda: all(server.status(r)["status"] == "COMPLETED" for r in ids), 180, "all done"
            )
        except AssertionError:
            pass  # counted as lost below
    finally:
        server.kill()
    rows = {r[0]: r[1:] for r in _rows(data, "SELECT id, status, error FROM jobs")}
    done = Counter(runs.read_text().split()) if runs.exists() else Counter()
    failed = [rows[r][1] for r in ids if r in rows and rows[r][0] == "COMPLETED" and rows[r][1]]
    return {
        "case": f"{count} jobs: worker SIGKILLed mid-job, then SIGTERM to the group mid-job,"
        " restart",
        "stop_seconds": round(stop_s, 1),
        "hung": hung,
        "lost": sum(1 for r in ids if r not in rows or rows[r][0] != "COMPLETED"),
        "duplicated": sum(1 for n in done.values() if n > 1),
        "failed": len(failed),
        "errors": [str(e)[:160] for e in failed],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="SIGTERM only")
    parser.add_argument(
        "--only", choices=("stops", "jobs"), help="only the stop cases, or only the jobs case"
    )
    args = parser.parse_args()
    rows = []
    if args.only != "stops":
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = jobs_case(Path(tmp))
            except Exception as exc:
                row = {"case": "jobs", "error": str(exc)[-300:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    sigs = ["SIGTERM"] if args.quick else ["SIGTERM", "SIGINT"]
    for sig in sigs if args.only != "jobs" else []:
        for target in ("api", "group"):
            for state in ("idle", "busy", "dead", "warming"):
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        row = stop_case(Path(tmp), sig, target, state)
                    except Exception as exc:  # a case that cannot even start is a figure too
                        row = {
                            "case": f"{sig} to {target}, worker {state}",
                            "error": str(exc)[-300:],
                        }
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.out:
        args.out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
