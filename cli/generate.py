"""`ovi generate`: one clip from a prompt (and a first-frame image), with a progress bar."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli import UsageError
from cli.clips import add_output_flags, check_before_loading, load, read_image, save, summary
from cli.flags import add_model_flags, add_sampling_flags


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
    from tqdm import tqdm

    if args.out.suffix.lower() != ".mp4":
        raise UsageError(f"--out must end in .mp4, got {args.out}")
    params = check_before_loading(args, [args.prompt])
    image = read_image(args.image) if args.image else None
    started = time.perf_counter()
    pipe = load(args)
    with tqdm(total=params.steps, unit="step", desc="denoise") as bar:
        out = pipe(
            args.prompt, image, params=params, callback=lambda info: bar.update(info.step - bar.n)
        )
    save(out, args.out, args)
    print(summary(out, args.out, time.perf_counter() - started))
    return 0
