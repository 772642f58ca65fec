"""What `ovi generate` and `ovi batch` share: load the pipeline from the flags, read an input
image, write a clip (MP4, and optionally WAV and raw arrays) and its one-line summary."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import UsageError
from cli.flags import model_source, runtime_options, sampling_overrides

if TYPE_CHECKING:
    from model.pipeline import OviOutput, OviPipeline
    from model.sampling import SamplingParams


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save-wav", action="store_true", help="also write the audio as .wav beside each clip"
    )
    parser.add_argument(
        "--save-arrays", action="store_true", help="also write raw frames+audio as .npz"
    )


def load(args: argparse.Namespace, device: Any = None) -> OviPipeline:
    """The pipeline the flags ask for; `device` (a rank's own) overrides `--device`."""
    from model.pipeline import load_pipeline

    return load_pipeline(
        model_source(args), runtime_options(args), None if device is None else str(device)
    )


def run_ranks(fn: Callable[..., Any], args: argparse.Namespace, *extra: Any) -> Any:
    """`fn(args, *extra, device=...)` on every rank of one clip (`--world-size N` gloo ranks on
    the CPU, one per `--gpus` entry on CUDA; `model.parallel.launch`), or here when that is one
    rank. Returns rank 0's value; a failed rank is one `error:` line."""
    runtime = runtime_options(args)
    gpus = runtime.gpu_list()
    if gpus and len(gpus) != runtime.parallel_size:
        raise UsageError(
            f"--gpus lists {len(gpus)} devices but one clip runs on {runtime.parallel_size}"
            " (2 with --cfg-parallel, K with --sp K, 2K with both)"
        )
    if runtime.parallel_size == 1:
        return fn(args, *extra, device=f"cuda:{gpus[0]}" if gpus else None)
    if runtime.world_size is None and not gpus:
        raise UsageError(
            f"--cfg-parallel/--sp ask for {runtime.parallel_size} ranks: add "
            f"--world-size {runtime.parallel_size} (CPU, gloo) or --gpus with as many devices"
        )
    from model.parallel import RankFailed, launch

    try:
        return launch(fn, (args, *extra), world_size=runtime.parallel_size, gpus=gpus or None)
    except RankFailed as exc:
        raise UsageError(str(exc)) if exc.bad_input else RanksFailed(str(exc)) from None


class RanksFailed(Exception):
    """A rank of a multi-rank clip failed (not bad input): an `error:` line, exit code 1."""


def check_before_loading(args: argparse.Namespace, prompts: list[str]) -> SamplingParams:
    """Everything a run can refuse without the model, refused before it is built (the same
    checks the pipeline makes, `model.pipeline.check_request`): the runtime options and the
    device, the sampling parameters and each prompt. Returns the sampling parameters."""
    from model.checks import check_device, check_request
    from model.presets import get_preset

    runtime = runtime_options(args)
    check_device(runtime.device)
    preset = get_preset(model_source(args).name)
    params = preset.sampling.replace(**sampling_overrides(args))
    for prompt in prompts:
        check_request(preset, prompt, params)
    return params


def read_image(path: Path) -> Any:
    from model.preprocess import load_image

    if not path.is_file():
        raise UsageError(f"image not found: {path}")
    return load_image(path.read_bytes())


def save(out: OviOutput, path: Path, args: argparse.Namespace) -> None:
    from model.media import write_arrays, write_mp4, write_wav

    write_mp4(path, out.video, out.audio, fps=out.fps, sample_rate=out.sample_rate)
    if args.save_wav:
        write_wav(path.with_suffix(".wav"), out.audio, sample_rate=out.sample_rate)
    if args.save_arrays:
        write_arrays(path.with_suffix(".npz"), video=out.video, audio=out.audio)


def summary(out: OviOutput, path: Path, seconds: float | None) -> str:
    """One line per clip; `seconds=None` leaves the time taken for the caller to add."""
    metrics = out.metrics
    line = (
        f"{path}: {out.width}x{out.height}, {out.num_frames} frames, {out.duration:.2f} s, "
        f"seed {out.seed}, DiT forwards {metrics.get('dit_forwards', 0)} run, "
        f"{metrics.get('dit_forwards_skipped', 0)} skipped"
    )
    return line if seconds is None else f"{line}, {seconds:.1f} s"
