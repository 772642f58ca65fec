"""API cost under bursts, measured against a real `ovi serve` (uvicorn, no workers) on loopback.

    python -m bench.api_burst submit [--n 200]   # submit latency p50/p99 for N concurrent submits
    python -m bench.api_burst image [--n 6] [--side 7071]
        # API peak RSS while N concurrent i2v submits carry a side x side 1-bit PNG data URI

The server runs in a child process with a fresh data dir; the figures printed are measured in
this run (wall-clock latencies of each submit as the client saw them; the server's RSS sampled
every 10 ms from /proc). Nothing is assumed or hard-coded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

KEY = "bench-key"
AUTH = {"Authorization": f"Key {KEY}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """`ovi serve --workers 0` in a child process, on a free loopback port."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.port = _free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OVI_MAX_QUEUE_SIZE": "10000"}
        env.update({f"OVI_{name.upper()}": value for name, value in settings.items()})
        cmd = [sys.executable, "-m", "cli", "serve", "--preset", "tiny", "--workers", "0"]
        cmd += ["--port", str(self.port), "--data-dir", str(data_dir), "--api-key", KEY]
        cmd += ["--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/docs", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start within 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


async def _post(port: int, path: str, body: bytes) -> int:
    """One POST over a fresh loopback connection with a bare asyncio client (httpx costs more
    CPU per request than the server does, and would measure itself); the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Key {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 120)
        await asyncio.wait_for(reader.read(), 120)  # the rest, until the server closes
        return int(status_line.split()[1])
    finally:
        writer.close()


async def _submits(port: int, bodies: list[dict], path: str) -> tuple[list[float], list[int]]:
    """All `bodies` POSTed at once (released together); each one's latency and status."""
    start = asyncio.Event()

    async def one(body: dict) -> tuple[float, int]:
        data = json.dumps(body).encode()
        await start.wait()
        t0 = time.perf_counter()
        code = await _post(port, path, data)
        return time.perf_counter() - t0, code

    tasks = [asyncio.create_task(one(b)) for b in bodies]
    await asyncio.sleep(0.2)
    start.set()
    results = await asyncio.gather(*tasks)
    return [t for t, _ in results], [c for _, c in results]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_submit(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            asyncio.run(_submits(server.port, [{"prompt": "warm-up"}] * 5, "/queue/fal-ai/ovi"))
            bodies = [{"prompt": f"burst {i}"} for i in range(n)]
            cpu0, wall0 = cpu_s(server.proc.pid), time.perf_counter()
            times, codes = asyncio.run(_submits(server.port, bodies, "/queue/fal-ai/ovi"))
            cpu, wall = cpu_s(server.proc.pid) - cpu0, time.perf_counter() - wall0
        finally:
            server.stop()
    ok = sum(c == 200 for c in codes)
    print(f"submit burst: {n} concurrent submits, {ok} answered 200")
    print(
        f"  latency p50 {_pct(times, 0.5) * 1000:.0f} ms, p99 {_pct(times, 0.99) * 1000:.0f} ms,"
        f" max {max(times) * 1000:.0f} ms, mean {statistics.mean(times) * 1000:.0f} ms"
    )
    print(
        f"  server CPU {cpu * 1000 / n:.1f} ms per submit ({cpu:.2f} s over {wall:.2f} s wall;"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )


def bomb_png(side: int = 7071) -> bytes:
    """A `side` x `side` 1-bit PNG: megapixels of white that compress to a few KB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def bench_image(n: int, side: int) -> None:
    png = bomb_png(side)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib(server.proc.pid))
                time.sleep(0.01)

        try:
            idle = rss_mib(server.proc.pid)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            bodies = [{"prompt": "p", "image_url": uri} for _ in range(n)]
            times, codes = asyncio.run(
                _submits(server.port, bodies, "/queue/fal-ai/ovi/image-to-video")
            )
            time.sleep(0.3)
            done.set()
            sampler.join(5)
        finally:
            server.stop()
    print(
        f"image burst: {n} concurrent i2v submits of a {side}x{side} 1-bit PNG ({len(png)} bytes)"
    )
    print(f"  answers {sorted(set(codes))}, slowest {max(times) * 1000:.0f} ms")
    print(f"  API RSS idle {idle:.0f} MiB, peak {peak[0]:.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["submit", "image"])
    p.add_argument("--n", type=int, default=None, help="concurrent requests (200 / 6)")
    p.add_argument("--side", type=int, default=7071, help="image: PNG width and height")
    args = p.parse_args()
    if args.what == "submit":
        bench_submit(args.n or 200)
    else:
        bench_image(args.n or 6, args.side)


if __name__ == "__main__":
    main()
