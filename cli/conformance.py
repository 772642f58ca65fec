"""`ovi conformance DIR`: check the library against reference vectors (`tools/conformance`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "conformance", help="check against reference vectors (fusion, sampler, t5, ...)"
    )
    p.add_argument("reference", type=Path, help="folder in the reference format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tools.conformance import run_conformance

    _, failed = run_conformance(args.reference)
    return 1 if failed else 0
