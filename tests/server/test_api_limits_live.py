"""Issue 17's bounded costs against a real `ovi serve` (uvicorn, no workers) on loopback: a stalled
or dripping body is cut off, and a burst of decompression-bomb PNGs keeps the API process's memory bounded.

One server process for the module (about 3 s to start); its RSS is read from /proc."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.api_burst import AUTH, KEY, Server, bomb_png, rss_mib

# The bound this test holds the API to: 6 concurrent i2v submits of a 16 MP image (the cap) and
# 6 of a 50 MP one (refused from its header) raise the API's RSS by less than this. Measured
# before issue 17: +1,324 MiB for the 50 MP burst alone.
RSS_GROWTH_BOUND_MIB = 200
# a request that declares a 1000-byte JSON body (the tests then send less, or send it slowly)
HEAD_1000 = (
    "POST /queue/fal-ai/ovi HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Authorization: Key {KEY}\r\nContent-Type: application/json\r\n"
    "Content-Length: 1000\r\n\r\n"
).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir: Path = tmp_path_factory.mktemp("live")
    srv = Server(data_dir, body_read_timeout_s="1")
    try:
        yield srv
    finally:
        srv.stop()


def test_a_stalled_body_is_cut_off(server: Server) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(HEAD_1000 + b'{"prompt": "ab')  # 15 of the 1000 declared bytes
        answer = b""
        while True:  # the server answers, then closes the connection
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error_type":"request_body_timeout"' in answer
    assert b"x-fal-request-id" in answer.lower()
    assert elapsed < 5, elapsed  # 1 s timeout, plus scheduling on a busy machine


def test_a_dripping_body_is_cut_off(server: Server) -> None:
    """A byte every 0.3 s never trips the 1 s per-piece timeout; the whole-body rate does."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(HEAD_1000)
        sock.settimeout(0.3)
        answer = b""
        for _ in range(100):  # 30 s at most
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not answer:  # nothing more once the answer has begun
                    sock.sendall(b" ")
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"too slow" in answer and b'"error_type":"request_body_timeout"' in answer
    assert elapsed < 6, elapsed  # cut off after about 1 s, plus scheduling on a busy machine


def _burst(server: Server, side: int, n: int = 6) -> list[int]:
    uri = "data:image/png;base64," + base64.b64encode(bomb_png(side)).decode()
    body = {"prompt": "p", "image_url": uri}

    def submit(_: int) -> int:
        with httpx.Client(timeout=60) as client:
            url = server.url + "/queue/fal-ai/ovi/image-to-video"
            return client.post(url, json=body, headers=AUTH).status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(submit, range(n)))


def test_image_burst_keeps_the_api_memory_bounded(server: Server) -> None:
    idle = rss_mib(server.proc.pid)
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(server.proc.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert _burst(server, 7071) == [422] * 6  # 50 MP: refused before any pixel is decoded
        assert _burst(server, 4000) == [200] * 6  # 16 MP: decoded two at a time, reduced
    finally:
        done.set()
        sampler.join(5)
    growth = peak[0] - idle
    print(f"API RSS idle {idle:.0f} MiB, peak {peak[0]:.0f} MiB (+{growth:.0f} MiB)")
    assert growth < RSS_GROWTH_BOUND_MIB, growth
