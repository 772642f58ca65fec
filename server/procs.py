"""Process liveness and stop signals, shared by the supervisor, `ovi worker` and a worker
group's ranks."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pid_alive(pid: int) -> bool:
    """True if `pid` is a running process (a zombie, dead but not reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust the signal probe
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state not in (["Z"], ["X"])


def on_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `stop()` in this process (instead of ending it)."""

    def handle(signum: int, frame: Any) -> None:
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
