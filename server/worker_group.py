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

Stopping: SIGTERM/SIGINT to the worker process (or to any rank: `docker stop` and Ctrl-C signal
the whole process group) set a `StopFlag` the ranks share, a byte of shared memory (no lock a
killed process could hold): rank 0 claims nothing more and releases its running job at the next
step without using an attempt, then tells the followers to return. The worker process's
`Watchdog` follows the API process's death and bounds the stop (`drain_timeout_s +
shutdown_grace_s`); the ranks, children of the forkserver rather than of the worker process,
end within `shutdown_grace_s` of the worker process's death, even by SIGKILL (`launch`'s
lifeline).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import torch

from server.procs import on_stop_signals
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


class StopFlag:
    """A stop flag shared by the worker process and its ranks: one byte of shared memory, set
    from signal handlers; `is_set()` never blocks (unlike a multiprocessing Event, whose lock a
    killed rank could hold)."""

    def __init__(self, ctx: Any = None) -> None:
        import multiprocessing as mp

        self._value = (ctx or mp.get_context("forkserver")).RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._value.value = True

    def is_set(self) -> bool:
        return bool(self._value.value)


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


class GroupFailed(BaseException):
    """A clip failed on one rank in a way the others may not share (a collective error, out of
    memory on one GPU): the ranks can no longer stay in step, so the group goes down and the job
    is recovered (`recover`: re-queued while attempts remain). A BaseException, so that the
    worker loop does not record it as the job's own failure."""


# Failures every rank meets alike, before any collective: the job fails, the group goes on.
SAME_ON_EVERY_RANK: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)


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
        from model.pipeline import GenerationCancelled

        with self._lock:
            self._channel.send(("clip", prompt, image, kw))
            try:
                return self._pipe(
                    prompt,
                    image,
                    callback=callback,
                    should_cancel=lambda: self._channel.cancel_flag(should_cancel),
                    **kw,
                )
            except (GenerationCancelled, *SAME_ON_EVERY_RANK):
                raise
            except Exception as exc:
                self.abandon()  # the group is out of step
                raise GroupFailed(f"rank 0: {type(exc).__name__}: {exc}") from exc

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

    def abandon(self) -> None:
        """Send nothing more: the group is going down (launch ends the followers)."""
        self._closed.set()

    def close(self) -> None:
        """Tell the followers to return (unless the group is out of step)."""
        if self._closed.is_set():
            return
        with self._lock:
            self._closed.set()
            self._channel.send(("stop",))


def follow(pipe: Any, device: Any) -> None:
    """A follower rank: run every clip rank 0 runs, until it says stop. A failure rank 0 may
    not share ends this rank (and so the group)."""
    from model.pipeline import GenerationCancelled

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
        except (GenerationCancelled, *SAME_ON_EVERY_RANK) as exc:  # rank 0 records it
            log.info("follower: clip ended with %s: %s", type(exc).__name__, exc)


def _group_rank(settings: ServerSettings, worker_id: str, stop_event: Any, device: Any = None):
    from server.worker import load_pipeline, run_worker

    if stop_event is not None and hasattr(stop_event, "set"):
        on_stop_signals(stop_event.set)  # a group-wide signal stops the group through rank 0
    pipe = load_pipeline(settings, None if device is None else str(device))
    if not pipe.parallel.is_main:
        follow(pipe, device)
        return None
    leader = LeaderPipeline(pipe, device)
    try:
        run_worker(settings, worker_id, stop_event=stop_event, pipeline=leader)
    except BaseException:
        leader.abandon()  # going down: launch ends the followers
        raise
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
        orphan_grace=settings.shutdown_grace_s,
    )


def worker_group_main(settings: ServerSettings, worker_id: str, slot: int) -> int:
    """Entry point of worker process `slot` when the runtime asks for ranks (the supervisor's,
    or `ovi worker`'s foreground group). SIGTERM/SIGINT set a stop flag the ranks share: rank 0
    claims nothing more and releases its running job at the next step (no attempt used). Returns
    0 once stopped, 1 when a rank failed (logged; the supervisor starts a new group)."""
    import multiprocessing as mp

    from model.parallel import RankFailed
    from server.logs import configure_logging
    from server.worker import StopRequest, Watchdog

    configure_logging(settings.log_level, settings.log_format, process=f"group[{slot}]")
    # The supervisor starts its workers as daemons, which multiprocessing forbids children; the
    # ranks end with this process anyway (launch's lifeline), so this one may start them.
    mp.current_process().daemon = False
    flag = StopFlag()  # reaches the ranks through their arguments
    request = StopRequest()  # what the watchdog watches: the API's death, the stop's duration

    def stop() -> None:
        request.request(immediate=True)
        flag.set()

    on_stop_signals(stop)
    Watchdog(request, settings.drain_timeout_s + settings.shutdown_grace_s).start()
    try:
        run_worker_group(settings, worker_id, stop_event=flag, slot=slot)
    except RankFailed as exc:
        log.error("worker %s: the group went down: %s", worker_id, exc)
        return 1
    return 0
