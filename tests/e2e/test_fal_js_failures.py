"""How the real `@fal-ai/client` reacts to requests that end without a result.

The client retries 429/502/503/504 on the result (3 tries, 1-4 s backoff) and re-POSTs `fal.run`
on them, so a final failure answered with one of those codes makes `fal.subscribe` reject only
after ~7 s and `fal.run` start the generation 4 times. The server answers failures with codes the
client does not retry; these tests hold it to that against an in-process server (no model: a
thread stands in for the worker and fails every job it claims).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from test_fal_js_client import node_client  # noqa: F401  (fixture)

from server.jobs.base import CANCELLED, START_TIMEOUT, WORKER_LOST, JobError, Outcome
from server.main import create_app
from server.settings import ServerSettings

KEY = "js-failure-key"


class FailingServer:
    """uvicorn on loopback, plain http, whose 'worker' completes each job with `error`."""

    def __init__(self, data_dir: Path) -> None:
        self.error = WORKER_LOST
        self.claimed: list[str] = []
        settings = ServerSettings(
            data_dir=data_dir, workers=0, api_keys=[KEY], poll_interval_s=0.05
        )
        self.app = create_app(settings)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _fail_jobs(self) -> None:
        while not self._stop.is_set():
            job = self.app.state.store.claim("w-fail")
            if job is None:
                time.sleep(0.02)
                continue
            self.claimed.append(job.id)
            self.app.state.store.complete(job.id, "w-fail", Outcome(error=self.error))

    def __enter__(self) -> FailingServer:
        threading.Thread(target=self.server.run, daemon=True).start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        threading.Thread(target=self._fail_jobs, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.should_exit = True


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailingServer]:
    with FailingServer(tmp_path_factory.mktemp("js-failures")) as server:
        yield server


def run_node(server: FailingServer, js_dir: Path, **env: str) -> tuple[dict[str, Any], float]:
    full_env = dict(os.environ, OVI_BASE_URL=server.url, FAL_KEY=KEY, **env)
    full_env["OVI_INPUT"] = json.dumps({"prompt": "x", "num_inference_steps": 2})
    started = time.perf_counter()
    proc = subprocess.run(
        ["node", "subscribe.mjs"], cwd=js_dir, env=full_env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    lines = proc.stdout.strip().splitlines()
    assert lines, f"node printed nothing:\n{proc.stderr}"
    return json.loads(lines[-1]), elapsed


@pytest.mark.parametrize(
    ("error", "code"),
    [(WORKER_LOST, 500), (JobError("boom", "runner_server_error", 500), 500), (CANCELLED, 499)],
)
@pytest.mark.parametrize("mode", ["polling", "streaming"])
def test_subscribe_rejects_at_once(failing_server, node_client, error, code, mode) -> None:  # noqa: F811
    failing_server.error = error
    out, elapsed = run_node(failing_server, node_client, OVI_MODE=mode)
    assert out.get("status") == code and out["body"]["error_type"] == error.error_type, out
    results = [r for r in out["requests"] if "/requests/" in r and "/status" not in r]
    assert len(results) == 1, out["requests"]  # the result was asked for once: no retries
    assert elapsed < 5, elapsed  # a retried 503 takes ~7 s


def test_start_timeout_is_not_retried(failing_server, node_client) -> None:  # noqa: F811
    failing_server.error = START_TIMEOUT
    out, _ = run_node(failing_server, node_client)
    assert out.get("status") == 504 and out["body"]["error_type"] == "request_timeout", out
    assert len([r for r in out["requests"] if "/status" not in r and "/requests/" in r]) == 1


def test_run_does_not_resubmit_a_failed_request(failing_server, node_client) -> None:  # noqa: F811
    failing_server.error = WORKER_LOST
    before = len(failing_server.claimed)
    out, elapsed = run_node(failing_server, node_client, OVI_CALL="run")
    assert out.get("status") == 500 and out["body"]["error_type"] == "runner_disconnected", out
    assert out["requests"] == ["POST /fal-ai/ovi"]  # a 503 here would be POSTed 4 times
    assert len(failing_server.claimed) == before + 1 and elapsed < 5
