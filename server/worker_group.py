"""One worker group per clip: `ovi worker --gpus 0,1,2,3 --cfg-parallel --sp 2`, and
`ovi serve --workers N --gpus-per-worker K` (worker i: GPUs [i K, i K + K)).

The worker process (`supervisor.worker_main` -> `worker_group_main`, or `ovi worker`) starts the group's ranks with
`model.parallel.launch`. Rank 0 runs the ordinary worker loop (`run_worker`): it alone talks to
the job store and the storage. Its pipeline is a `LeaderPipeline`, which sends each clip's
inputs to the other ranks before running it; they run the same call (`follow`) and drop the
result. Cancellation is rank 0's decision, broadcast before every step, so every rank stops at
the same step. While idle, rank 0 sends a keep-alive every `KEEPALIVE_S`, so a follower's wait
is bounded by the collective timeout (`COLLECTIVE_TIMEOUT_S`) even then.

A rank that raises or dies takes the group down: `launch` terminates the others and raises, the
worker process exits, its heartbeat stops, and the existing recovery re-queues the job.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from server.settings import ServerSettings

log = logging.getLogger(__name__)

KEEPALIVE_S = 20.0
COLLECTIVE_TIMEOUT_S = 300.0  # a follower waits this long for the next message (> KEEPALIVE_S)


def group_gpus(settings: ServerSettings, slot: int) -> list[int] | None:
    """The CUDA devices of worker `slot`'s group; None for gloo ranks on the CPU."""
    runtime = settings.runtime
    if runtime.gpu_list():  # `ovi worker --gpus ...`: this slot's slice
        return runtime.gpu_groups()[slot]
    if (runtime.device or "").startswith("cpu") or runtime.world_size is not None:
        return None
    if not torch.cuda.is_available():
        return None
    per_worker = settings.gpus_per_worker or runtime.parallel_size
    return list(range(slot * per_worker, slot * per_worker + runtime.parallel_size))


class _Channel:
    """Rank 0 -> every rank of the layout: one picklable message, and the per-step cancel flag."""

    def __init__(self, pipe: Any, device: Any) -> None:
        import torch.distributed as dist

        self.group = pipe.parallel.state.group
        self.src = dist.get_global_rank(self.group, 0)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def send(self, message: Any = None) -> Any:
        """Rank 0 gives `message`; every rank returns it."""
        import torch.distributed as dist

        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # per thread (the keep-alive runs in its own)
        box = [message]
        dist.broadcast_object_list(box, src=self.src, group=self.group, device=self.device)
        return box[0]

    def cancel_flag(self, decide: Any) -> bool:
        """Rank 0's `decide()` (False without one) on every rank."""
        import torch.distributed as dist

        flag = torch.tensor([1 if decide is not None and decide() else 0], device=self.device)
        dist.broadcast(flag, src=self.src, group=self.group)
        return bool(flag.item())


class LeaderPipeline:
    """Rank 0's pipeline: the real one, whose calls the followers repeat."""

    def __init__(self, pipe: Any, device: Any) -> None:
        self._pipe = pipe
        self._channel = _Channel(pipe, device)
        self._lock = threading.Lock()  # one message at a time, in the same order everywhere
        self._closed = threading.Event()
        self._keepalive = threading.Thread(target=self._idle, name="ovi-group-keepalive")
        self._keepalive.daemon = True
        self._keepalive.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, prompt: str, image: Any = None, *, should_cancel: Any = None, **kw: Any):
        callback = kw.pop("callback", None)
        with self._lock:
            self._channel.send(("clip", prompt, image, kw))
            return self._pipe(
                prompt,
                image,
                callback=callback,
                should_cancel=lambda: self._channel.cancel_flag(should_cancel),
                **kw,
            )

    def _idle(self) -> None:
        while not self._closed.wait(KEEPALIVE_S):
            if self._lock.acquire(blocking=False):
                try:
                    if not self._closed.is_set():
                        self._channel.send(("noop",))
                except Exception:  # the group is going down; launch reports why
                    log.exception("worker group keep-alive failed")
                    return
                finally:
                    self._lock.release()

    def close(self) -> None:
        """Tell the followers to return."""
        with self._lock:
            self._closed.set()
            self._channel.send(("stop",))


def follow(pipe: Any, device: Any) -> None:
    """A follower rank: run every clip rank 0 runs, until it says stop."""
    channel = _Channel(pipe, device)
    while True:
        message = channel.send()
        if message[0] == "stop":
            return
        if message[0] != "clip":
            continue
        _, prompt, image, kw = message
        try:
            pipe(
                prompt, image, should_cancel=lambda: channel.cancel_flag(None), **kw
            )  # rank 0 records the result (or the same error)
        except Exception as exc:  # the same failure on rank 0 fails the job there
            log.info("follower: clip ended with %s: %s", type(exc).__name__, exc)


def _group_rank(settings: ServerSettings, worker_id: str, stop_event: Any, device: Any = None):
    from server.worker import load_pipeline, run_worker

    pipe = load_pipeline(settings, None if device is None else str(device))
    if not pipe.parallel.is_main:
        follow(pipe, device)
        return None
    leader = LeaderPipeline(pipe, device)
    try:
        run_worker(settings, worker_id, stop_event=stop_event, pipeline=leader)
    finally:
        leader.close()
    return None


def run_worker_group(
    settings: ServerSettings, worker_id: str, *, stop_event: Any = None, slot: int = 0
) -> None:
    """Start worker `slot`'s group (its ranks) and run it until `stop_event` or a failure
    (`model.parallel.RankFailed`, raised here)."""
    from model.parallel import launch

    runtime = settings.runtime
    gpus = group_gpus(settings, slot)
    log.info(
        "worker %s: group of %d ranks (cfg %s, sp %d) on %s",
        worker_id,
        runtime.parallel_size,
        runtime.cfg_parallel,
        runtime.sp_degree,
        f"GPUs {gpus}" if gpus else "the CPU (gloo)",
    )
    launch(
        _group_rank,
        (settings, worker_id, stop_event),
        world_size=runtime.parallel_size,
        gpus=gpus,
        collective_timeout=COLLECTIVE_TIMEOUT_S,
    )


def worker_group_main(settings: ServerSettings, worker_id: str, slot: int) -> None:
    """Entry point of worker process `slot` when the runtime asks for ranks (the supervisor's,
    or `ovi worker`'s foreground group). SIGTERM/SIGINT set a stop flag the ranks share: rank 0
    claims nothing more and releases its running job at the next step (no attempt used)."""
    import multiprocessing as mp
    import signal

    from server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, process=f"group[{slot}]")
    stop = mp.get_context("forkserver").Event()  # reaches the ranks through their arguments

    def handle(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    run_worker_group(settings, worker_id, stop_event=stop, slot=slot)
