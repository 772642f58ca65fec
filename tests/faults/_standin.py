"""Fault-injection helpers: the real server lifecycle and worker processes, with the model
replaced by a stand-in at its boundary (`server.worker.load_pipeline`), so a test controls how
long loading and each denoising step take without minutes of CPU inference.

Everything else is real: `ovi serve`'s start-up (`server.lifecycle`, or uvicorn for older
versions), uvicorn, the supervisor, spawned worker processes with their signal handling, the
SQLite job store, the file storage and ffmpeg muxing. `python _standin.py serve ARGS...` runs a
server, `python _standin.py worker ARGS...` an `ovi worker`; env `STANDIN_LOAD_S` (load time),
`STANDIN_STEP_S` (per step), `STANDIN_LOAD_FAIL` (a load error message) tune the stand-in;
`STANDIN_RUNS` names a file that gets each prompt whose clip ran to its end.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@dataclass
class _Preset:
    sampling: Any


class StandInPipeline:
    """Honours the pipeline's contract for a worker: `preset.sampling`, `runtime`, `__call__(prompt,
    image, params=, callback=, should_cancel=)`, step callbacks and cancellation between steps,
    an `OviOutput`-shaped result."""

    def __init__(self, step_s: float) -> None:
        from model.options import RuntimeOptions
        from model.sampling import SamplingParams

        self.preset = _Preset(SamplingParams(steps=4, height=32, width=32))
        self.runtime = RuntimeOptions()  # the worker reads runtime.fast
        self.step_s = step_s

    def __call__(
        self, prompt: str, image: Any, *, params: Any, should_cancel: Any, callback: Any = None
    ):
        import numpy as np

        from model.pipeline import GenerationCancelled, OviOutput, StepInfo

        t0 = time.monotonic()
        for step in range(1, params.steps + 1):
            if should_cancel():
                raise GenerationCancelled()
            time.sleep(self.step_s)
            if callback is not None:  # a follower rank of a worker group has none
                callback(StepInfo(step, params.steps, time.monotonic() - t0))
        runs = os.environ.get("STANDIN_RUNS")
        if runs and callback is not None:  # one line per clip run to its end (bench.faults)
            with open(runs, "a") as f:
                f.write(prompt + "\n")
        video = np.full((8, 32, 32, 3), 100, dtype=np.uint8)
        audio = np.zeros(16000 // 3, dtype=np.float32)
        return OviOutput(video=video, audio=audio, seed=int(params.seed or 0), height=32, width=32)


def load_standin(settings: Any, device: str | None = None) -> StandInPipeline:
    failure = os.environ.get("STANDIN_LOAD_FAIL")
    if failure:
        raise ValueError(failure)
    import model.media  # noqa: F401 - what a real load has imported (torch included)
    import model.pipeline  # noqa: F401
    import model.preprocess  # noqa: F401

    time.sleep(float(os.environ.get("STANDIN_LOAD_S", "0")))
    pipe = StandInPipeline(float(os.environ.get("STANDIN_STEP_S", "0.2")))
    import torch.distributed as dist

    if dist.is_initialized():  # a rank of a worker group: what `_Channel` reads
        from types import SimpleNamespace

        group = SimpleNamespace(group=dist.group.WORLD)
        pipe.parallel = SimpleNamespace(is_main=dist.get_rank() == 0, state=group)
    return pipe


def standin_worker_main(*args: Any) -> None:
    """Spawned worker target: the real worker entry point (a worker group's with
    `--cfg-parallel`/`--sp`: real ranks and collectives) with the stand-in model."""
    import server.worker as worker

    worker.load_pipeline = load_standin
    settings = args[0]
    if getattr(settings.runtime, "parallel_size", 1) > 1:
        import _standin  # by name: the ranks unpickle `group_rank` from it

        import model.parallel
        from server.worker_group import worker_group_main

        real = model.parallel.launch
        model.parallel.launch = lambda fn, a=(), **kw: real(_standin.group_rank, a, **kw)
        worker_group_main(*args)
        return
    worker.worker_process_main(*args)


def group_rank(*args: Any, device: Any = None) -> Any:
    """A worker group's rank, with the stand-in model."""
    import server.worker as worker
    from server.worker_group import _group_rank

    worker.load_pipeline = load_standin
    return _group_rank(*args, device=device)


def serve(argv: list[str]) -> None:
    """`ovi serve ARGV` with stand-in workers."""
    import functools

    import server.main
    from cli.main import build_parser
    from cli.serve import settings_from_args
    from server.supervisor import WorkerSupervisor

    server.main.WorkerSupervisor = functools.partial(  # type: ignore[misc]
        WorkerSupervisor, target=standin_worker_main
    )
    args = build_parser().parse_args(["serve", *argv])
    settings = settings_from_args(args)
    try:
        from server.lifecycle import serve as run
    except ImportError:  # before the lifecycle module: what `ovi serve` did then
        import uvicorn

        def run(settings: Any, recover_db: bool = False) -> None:
            uvicorn.run(
                server.main.create_app(settings),
                host=settings.host,
                port=settings.port,
                log_level="info",
                timeout_graceful_shutdown=5,
            )

    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(settings, recover_db=getattr(args, "recover_db", False))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def worker(argv: list[str]) -> None:
    """`ovi worker ARGV` (the real CLI entry point and its signal handling) with the stand-in."""
    import server.worker
    from cli.main import main

    server.worker.load_pipeline = load_standin
    sys.exit(main(["worker", *argv]))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    elif sys.argv[1] == "worker":
        worker(sys.argv[2:])
