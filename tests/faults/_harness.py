"""Start, fault and stop a stand-in `ovi serve` (see `_standin.py`); every wait is bounded.

Shared by the fault-injection tests and `bench/faults.py` (which prints before/after figures).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KEY = "fault-key"
AUTH = {"Authorization": f"Key {KEY}"}
T2V = "fal-ai/ovi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[-1].split()[1]) == pid and pid_alive(int(entry.name)):
                out.append(int(entry.name))
    return out


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path
    workers_seen: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=timeout)

    def log(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def health(self) -> tuple[int, dict[str, Any]]:
        with self.http(timeout=5) as c:
            r = c.get("/health")
            return r.status_code, r.json()

    def worker_pids(self) -> list[int]:
        """Worker processes (the server's live children), remembered for `leftovers`."""
        pids = [p for p in children(self.process.pid) if "resource_tracker" not in _cmd(p)]
        self.workers_seen.update(pids)
        return pids

    def descendants(self) -> list[int]:
        """Every live process under the server (workers, a worker group's forkserver and
        ranks), remembered for `leftovers`."""
        found, todo = [], [self.process.pid]
        while todo:
            for pid in children(todo.pop()):
                if "resource_tracker" not in _cmd(pid):
                    found.append(pid)
                    todo.append(pid)
        self.workers_seen.update(found)
        return found

    def leftovers(self) -> list[int]:
        return [p for p in self.workers_seen if pid_alive(p)]

    def submit(self, steps: int = 4, seed: int = 1, prompt: str = "x") -> httpx.Response:
        with self.http() as c:
            return c.post(
                f"/queue/{T2V}", json={"prompt": prompt, "num_inference_steps": steps, "seed": seed}
            )

    def status(self, request_id: str) -> dict[str, Any]:
        with self.http() as c:
            return c.get(f"/queue/{T2V}/requests/{request_id}/status").json()

    def wait(self, predicate, timeout: float, what: str, step: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.log()}")
            try:
                value = predicate()
            except (httpx.TransportError, ValueError):
                value = None
            if value:
                return value
            time.sleep(step)
        try:
            state = self.health()[1]
        except Exception as exc:  # noqa: BLE001 - only for the message
            state = repr(exc)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} ({state}):\n{self.log()}"
        )

    def stop(self, sig: int, *, group: bool, limit: float = 40.0) -> tuple[float, bool]:
        """Send `sig` to the server alone or to its whole process group; seconds until it has
        exited, and whether it hung past `limit` (then the group is SIGKILLed)."""
        self.worker_pids()
        t0 = time.monotonic()
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        try:
            self.process.wait(limit)
            return time.monotonic() - t0, False
        except subprocess.TimeoutExpired:
            self.kill()
            return time.monotonic() - t0, True

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start(
    data_dir: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    wait_for: tuple[str, ...] = ("ready",),
    timeout: float = 180.0,  # loading imports torch: slow on a busy 2-core machine
) -> Server:
    """A stand-in server on a free loopback port, in its own session (process group); waits
    until `/health` says one of `wait_for` (nothing if empty)."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    full_env.update(
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        # an outer PYTHONPATH (another checkout, for "before" figures) comes first
        PYTHONPATH=os.pathsep.join(p for p in (full_env.get("PYTHONPATH"), str(ROOT)) if p),
        OVI_SHUTDOWN_GRACE_S="5",
        OVI_POLL_INTERVAL_S="0.05",
        **(env or {}),
    )
    cmd = [
        sys.executable, str(HERE / "_standin.py"), "serve",
        "--preset", "tiny_1s", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir), "--api-key", KEY, "--workers", str(workers), *args,
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(process, port, data_dir, log_path)
    if wait_for:
        try:
            server.wait(
                lambda: server.health()[1].get("status") in wait_for, timeout, str(wait_for)
            )
        except BaseException:
            server.kill()
            raise
    return server
