"""`python -m bench.queue`: the job queue's figures, SQLite against Redis, printed.

For each backend it starts a real API replica (`ovi serve --workers 0`, plain HTTP on loopback;
Redis: a real `redis-server` with AOF, `appendfsync everysec`) and measures

- submissions/s: `POST /queue/fal-ai/ovi` from `--submitters` concurrent clients;
- status-poll latency p50/p99: `GET .../status` from 50 concurrent pollers (`--pollers`), for
  `--poll-seconds`, while the queue holds every job submitted above;
- claim-to-start latency p50/p99: from a job's submission to a polling worker's claim
  (`started_at - created_at` as the store records them; idle workers poll every
  `poll_interval_s`, 0.1 s by default), one job at a time, `--claims` jobs; plus the bare
  `claim()` call.

No model and no torch: the API process never loads one. Figures depend on the machine and its
load; `--json` also prints them as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from server.jobs import NewJob, open_store
from tools.services import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
BODY = {"prompt": "bench", "num_inference_steps": 1}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_api(store_url: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    env.update(HF_HUB_OFFLINE="1", OVI_MAX_QUEUE_SIZE="100000")
    cmd = [
        sys.executable, "-m", "cli", "serve", "--preset", "tiny_1s", "--workers", "0",
        "--port", str(port), "--data-dir", str(data_dir), "--job-store", store_url,
        "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code in (200, 503):
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API replica did not start in 60 s")


def submissions(base: str, total: int, clients: int) -> tuple[float, list[str]]:
    ids: list[str] = []
    lock = threading.Lock()
    per = total // clients

    def submit() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            for _ in range(per):
                r = c.post("/queue/fal-ai/ovi", json=BODY)
                r.raise_for_status()
                with lock:
                    ids.append(r.json()["request_id"])

    threads = [threading.Thread(target=submit) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return len(ids) / (time.perf_counter() - t0), ids


def poll_latency(base: str, ids: list[str], pollers: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def poll(n: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=base, timeout=30) as c:
            i = n
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.get(f"/queue/fal-ai/ovi/requests/{ids[i % len(ids)]}/status")
                mine.append(time.perf_counter() - t0)
                r.raise_for_status()
                i += pollers
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=poll, args=(n,)) for n in range(pollers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return latencies


def claim_to_start(store_url: str, jobs: int, poll_interval_s: float) -> dict[str, float]:
    """A worker polling like `server.worker.run_worker` does; jobs submitted one at a time."""
    api, worker = open_store(store_url), open_store(store_url)
    try:
        while worker.claim("drain") is not None:  # the queue left by the sections above
            pass
        waits, calls = [], []
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                job = worker.claim("bench-worker")
                calls.append(time.perf_counter() - t0)
                if job is None:
                    stop.wait(poll_interval_s)
                    continue
                waits.append(job.started_at - job.created_at)

        thread = threading.Thread(target=work)
        thread.start()
        for _ in range(jobs):
            api.submit(NewJob(app="fal-ai/ovi", input=BODY))
            time.sleep(poll_interval_s * 1.37)  # not in step with the worker's polls
        deadline = time.monotonic() + 30
        while len(waits) < jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(10)
        return {
            "claim_to_start_p50_ms": 1000 * percentile(waits, 0.5),
            "claim_to_start_p99_ms": 1000 * percentile(waits, 0.99),
            "claim_call_p50_ms": 1000 * percentile(calls, 0.5),
            "claim_call_p99_ms": 1000 * percentile(calls, 0.99),
        }
    finally:
        api.close()
        worker.close()


def run_backend(name: str, store_url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    proc, base = start_api(store_url, tmp / f"data-{name}")
    try:
        rate, ids = submissions(base, args.submissions, args.submitters)
        latencies = poll_latency(base, ids, args.pollers, args.poll_seconds)
    finally:
        proc.terminate()
        proc.wait(20)
    figures: dict[str, Any] = {
        "backend": name,
        "submissions_per_s": rate,
        "polls": len(latencies),
        "poll_p50_ms": 1000 * statistics.median(latencies),
        "poll_p99_ms": 1000 * percentile(latencies, 0.99),
    }
    figures.update(claim_to_start(store_url, args.claims, args.poll_interval))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__.split("\n")[0])
    p.add_argument("--submissions", type=int, default=400)
    p.add_argument("--submitters", type=int, default=8)
    p.add_argument("--pollers", type=int, default=50)
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--claims", type=int, default=40)
    p.add_argument("--poll-interval", type=float, default=0.1, help="the worker's idle poll")
    p.add_argument("--backends", default="sqlite,redis")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.backends.split(","):
            if name == "sqlite":
                results.append(run_backend(name, f"sqlite:///{tmp / 'jobs.sqlite3'}", tmp, args))
            elif name == "redis":
                redis = RedisServer(tmp / "redis").start()
                try:
                    results.append(run_backend(name, redis.url, tmp, args))
                finally:
                    redis.stop()
            else:
                p.error(f"unknown backend {name!r}")
    print(f"queue benchmark ({os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f})")
    header = (
        f"{'backend':8} {'submit/s':>9} {'poll p50':>9} {'poll p99':>9} "
        f"{'start p50':>10} {'start p99':>10} {'claim p50':>10} {'claim p99':>10}"
    )
    print(header)
    for r in results:
        print(
            f"{r['backend']:8} {r['submissions_per_s']:9.0f} {r['poll_p50_ms']:7.1f}ms"
            f" {r['poll_p99_ms']:7.1f}ms {r['claim_to_start_p50_ms']:8.1f}ms"
            f" {r['claim_to_start_p99_ms']:8.1f}ms {r['claim_call_p50_ms']:8.2f}ms"
            f" {r['claim_call_p99_ms']:8.2f}ms"
        )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
