"""End-to-end fixtures: `ovi_server`, one tiny_1s-preset server over TLS shared by the session
(one model load). More servers: `_e2e.start_server` (the restart test)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from _e2e import Server, start_server


@pytest.fixture(scope="session")
def ovi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One tiny_1s-preset server for the session's end-to-end tests."""
    base = tmp_path_factory.mktemp("ovi-e2e")
    server = start_server(base / "data", base / "tls")
    try:
        yield server
    finally:
        code = server.stop()
        if code not in (0, -signal.SIGTERM):
            print(server.log_tail())
