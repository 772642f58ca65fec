"""A rank function for `test_parallel.py` that imports nothing heavy (fast to spawn)."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
import torch.distributed as dist


def die_in_collective(device: Any = None) -> None:
    """Rank 1 is killed while rank 0 waits for it in a collective."""
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))
