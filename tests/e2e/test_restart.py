"""Restart: requests queued (and one running) when the server is killed complete after restart.

The first server is killed with SIGKILL while one job runs and two wait: the queue is the
SQLite file in the data dir, and the orphaned worker notices its parent is gone and puts the
running job back. The second server, on the same data dir, finishes all three. Clients use the
unmodified fal-client, by request id, configured only by environment variables.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from _e2e import Server, check_mp4, start_server

T2V = "fal-ai/ovi"

SUBMIT = """
import json, os, signal, sys, time, fal_client
args = {"prompt": "a long one", "num_inference_steps": 20, "seed": 1}
long = fal_client.submit("fal-ai/ovi", arguments=args)
short = [fal_client.submit("fal-ai/ovi", arguments={"prompt": f"clip {i}", "num_inference_steps": 2, "seed": 10 + i}) for i in range(2)]
deadline = time.time() + 120
while not isinstance(long.status(), fal_client.InProgress):  # wait until it runs
    assert time.time() < deadline
    time.sleep(0.02)
queued = [type(h.status()).__name__ for h in short]
os.kill(int(sys.argv[1]), signal.SIGKILL)  # crash the server mid-job
print(json.dumps({"ids": [long.request_id] + [h.request_id for h in short], "queued": queued}))
"""

RESULTS = """
import json, sys, fal_client
ids = sys.argv[1:]
out = {"results": [fal_client.result("fal-ai/ovi", i) for i in ids]}
out["logs"] = [[l["message"] for l in fal_client.status("fal-ai/ovi", i, with_logs=True).logs] for i in ids]
print(json.dumps(out))
"""


def client_script(server: Server, code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=server.client_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{proc.stderr}\n--- server log ---\n{server.log_tail()}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_queued_and_running_jobs_complete_after_restart(tmp_path: Path) -> None:
    data, tls = tmp_path / "data", tmp_path / "tls"
    first = start_server(data, tls)
    try:
        submitted = client_script(first, SUBMIT, str(first.process.pid))
    finally:
        first.stop(signal.SIGKILL)
    assert submitted["queued"] == ["Queued", "Queued"]

    second = start_server(data, tls)
    try:
        out = client_script(second, RESULTS, *submitted["ids"])
        results = out["results"]
        assert [r["seed"] for r in results] == [1, 10, 11]
        with second.http() as client:
            check_mp4(client.get(results[1]["video"]["url"]).content)
        assert any("back in the queue" in m or "re-queued" in m for m in out["logs"][0]), out
    finally:
        second.stop()
