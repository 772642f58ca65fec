"""What `ovi generate` and `ovi batch` share: load the pipeline from the flags, read an input
image, write a clip (MP4, and optionally WAV and raw arrays) and its one-line summary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import UsageError
from cli.flags import model_source, runtime_options

if TYPE_CHECKING:
    from model.pipeline import OviOutput, OviPipeline


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save-wav", action="store_true", help="also write the audio as .wav beside each clip"
    )
    parser.add_argument(
        "--save-arrays", action="store_true", help="also write raw frames+audio as .npz"
    )


def load(args: argparse.Namespace) -> OviPipeline:
    from model.pipeline import load_pipeline

    return load_pipeline(model_source(args), runtime_options(args))


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


def summary(out: OviOutput, path: Path, seconds: float) -> str:
    metrics = out.metrics
    return (
        f"{path}: {out.width}x{out.height}, {out.num_frames} frames, {out.duration:.2f} s, "
        f"seed {out.seed}, {seconds:.1f} s, DiT forwards {metrics.get('dit_forwards', 0)} run, "
        f"{metrics.get('dit_forwards_skipped', 0)} skipped"
    )
