"""`ovi generate`: one clip from a prompt (and a first-frame image), with a progress bar."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cli import UsageError
from cli.clips import (
    add_output_flags,
    check_before_loading,
    load,
    read_image,
    run_ranks,
    save,
    summary,
)
from cli.flags import add_model_flags, add_sampling_flags, sampling_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate one clip")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", type=Path, help="first frame (PNG/JPEG/WebP/GIF): image-to-video")
    p.add_argument("--out", type=Path, required=True, help="output .mp4")
    add_output_flags(p)
    add_model_flags(p)
    add_sampling_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() != ".mp4":
        raise UsageError(f"--out must end in .mp4, got {args.out}")
    check_before_loading(args, [args.prompt])
    if args.image and not args.image.is_file():
        raise UsageError(f"image not found: {args.image}")
    started = time.perf_counter()
    line = run_ranks(_generate, args)  # one process, or every rank of the clip
    if line is not None:  # None: a rank other than 0 under torchrun
        print(f"{line}, {time.perf_counter() - started:.1f} s")
    return 0


def _generate(args: argparse.Namespace, device: Any = None) -> str | None:
    """One rank's part (all of it in one process): rank 0 shows progress and writes the files;
    returns the summary line without the time taken."""
    from tqdm import tqdm

    image = read_image(args.image) if args.image else None
    pipe = load(args, device)
    main = pipe.parallel is None or pipe.parallel.is_main
    params = pipe.preset.sampling.replace(**sampling_overrides(args))
    with tqdm(total=params.steps, unit="step", desc="denoise", disable=not main) as bar:
        out = pipe(
            args.prompt, image, params=params, callback=lambda info: bar.update(info.step - bar.n)
        )
    if not main:
        return None
    save(out, args.out, args)
    return summary(out, args.out, None)
