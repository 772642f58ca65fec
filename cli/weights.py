"""`ovi weights`: download the weight files of a variant (resumable), or list them."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from model.presets import DEFAULT_VARIANT, PRESETS

    real = [n for n, pr in PRESETS.items() if not pr.random_weights]
    p = sub.add_parser("weights", help="download the weight files of a variant (resumable)")
    p.add_argument("--variant", choices=real, default=DEFAULT_VARIANT)
    p.add_argument("--dir", type=Path, default=None, help="weights dir (default: ./weights)")
    p.add_argument("--fp8", action="store_true", help="the float8 fusion file instead of bf16")
    p.add_argument(
        "--fast", action="store_true", help="also the few-step mode's FastWan LoRA (--fast)"
    )
    p.add_argument("--list", action="store_true", help="only list the files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.weights import DEFAULT_WEIGHTS_DIR, download, variant_files

    weights_dir = args.dir or DEFAULT_WEIGHTS_DIR
    if args.list:
        for spec in variant_files(args.variant, args.fp8, args.fast):
            size = f"{spec.approx_bytes / 1e9:.1f} GB" if spec.approx_bytes else "?"
            print(f"{spec.repo}:{spec.path} -> {weights_dir / spec.local} ({size})")
        return 0
    paths = download(args.variant, weights_dir, args.fp8, args.fast)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0
