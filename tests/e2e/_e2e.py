"""End-to-end helpers: start a real `ovi serve --preset tiny_1s` over TLS on a free loopback port.

Clients are configured only as the README says: FAL_RUN_HOST, FAL_QUEUE_RUN_HOST,
SSL_CERT_FILE and FAL_KEY (see `Server.client_env`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "e2e-secret-key"


@dataclass
class Server:
    host_port: str  # "127.0.0.1:PORT"
    data_dir: Path
    bundle: Path  # certifi's CAs + our local CA (for SSL_CERT_FILE)
    ca_cert: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"https://{self.host_port}"

    def client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "OVI_"))}
        env.update(
            FAL_RUN_HOST=self.host_port,
            FAL_QUEUE_RUN_HOST=f"{self.host_port}/queue",
            SSL_CERT_FILE=str(self.bundle),
            FAL_KEY=API_KEY,
            NODE_EXTRA_CA_CERTS=str(self.ca_cert),
        )
        return env

    def http(self, **kw) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.bundle))
        return httpx.Client(base_url=self.url, verify=context, timeout=60, **kw)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(directory: Path, *, fal_hosts: bool = False) -> tuple[Path, Path, Path, Path]:
    """(server cert, server key, CA bundle, CA cert) made by `ovi tls init`'s code."""
    from server.tls import init_tls

    files = init_tls(directory, fal_hosts=fal_hosts)
    return files.server_cert, files.server_key, files.bundle, files.ca_cert


def start_server(
    data_dir: Path,
    tls_dir: Path,
    *,
    workers: int = 1,
    port: int | None = None,
    wait_ready: bool = True,
    extra_env: dict[str, str] | None = None,
    fal_hosts: bool = False,
    preset: str = "tiny_1s",
) -> Server:
    """Start `ovi serve --preset PRESET` (default `tiny_1s`) and wait for /health (ready, or just
    up if workers=0). `fal_hosts`: the certificate also covers fal's own host names
    (`ovi tls init --fal-hosts`)."""
    cert, key, bundle, ca = make_tls(
        tls_dir, fal_hosts=fal_hosts
    )  # keeps an existing CA, so old bundles still work
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}-{int(time.time() * 1000)}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "OVI_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        OVI_SSE_PING_INTERVAL_S="1",
        OVI_SHUTDOWN_GRACE_S="5",
        **(extra_env or {}),
    )
    cmd = [
        sys.executable, "-m", "cli", "serve",
        "--preset", preset, "--device", "cpu",
        "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir),
        "--tls-cert", str(cert), "--tls-key", str(key),
        "--api-key", API_KEY,
        "--workers", str(workers),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"127.0.0.1:{port}", data_dir, bundle, ca, log_path, process)
    deadline = time.monotonic() + 180
    with server.http() as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                r = client.get("/health")
                if r.status_code == 200 or (r.status_code == 503 and not wait_ready):
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise RuntimeError(f"server not ready in time:\n{server.log_tail()}")
            time.sleep(0.2)


def png_data_uri(size: tuple[int, int] = (64, 48), color=(30, 120, 200)) -> str:
    import base64

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def check_mp4(data: bytes, *, frames: int = 25) -> None:
    """The clip decodes: `frames` video frames and an audio stream."""
    import av

    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio, "no audio stream"
        video = container.streams.video[0]
        count = sum(1 for _ in container.decode(video))
    assert count == frames, f"{count} frames"


def run_client_script(
    server: Server, script: str, name: str, *args: str, timeout: float = 180
) -> Any:
    """Run `script` (a test module that doubles as a fal-client program) in a fresh Python with
    only the client environment the README gives; return the JSON on its last output line."""
    proc = subprocess.run(
        [sys.executable, script, name, *args],
        env=server.client_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"scenario {name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
            f"--- server log ---\n{server.log_tail()}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])
