"""Fault figures for `ovi serve`: shutdown seconds and processes left per signal x worker state,
and jobs lost / duplicated / failed across a worker SIGKILL and a graceful group stop.

    python -m bench.faults [--out FILE]

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="SIGTERM only")
    args = parser.parse_args()
    rows = []
    sigs = ["SIGTERM"] if args.quick else ["SIGTERM", "SIGINT"]
    for sig in sigs:
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
