"""`ovi`: the entry point (`[project.scripts]`). Each subcommand module registers its parser;
`main` turns every expected failure into one `error:` line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cli import UsageError, batch, conformance, generate, serve, tls, weights, worker
from cli.clips import RanksFailed

SUBCOMMANDS = (generate, batch, serve, worker, conformance, weights, tls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovi", description="Ovi audio+video generation: CLI and server"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pydantic import ValidationError

    from model.errors import CheckpointMismatchError, WeightFileMissingError

    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:  # settings: one line naming the flag, not pydantic's dump
        print(f"error: {settings_error(exc)}", file=sys.stderr)
        return 2
    except (
        UsageError,
        WeightFileMissingError,
        CheckpointMismatchError,
        ValueError,  # also ImageLoadError and pydantic's ValidationError
        FileNotFoundError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RanksFailed as exc:  # a rank of a multi-rank clip failed (logged above)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ovi weights --list | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def settings_error(exc: Exception) -> str:
    """The first error of a pydantic `ValidationError` on the settings as one line: the flag
    (a field `tls_cert` is `--tls-cert`, also `OVI_TLS_CERT`), the value given and the reason."""
    error = exc.errors()[0]  # type: ignore[attr-defined]
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    loc = error.get("loc") or ()
    if not loc:  # a check across fields: the message names them
        return message
    field = str(loc[0])
    if field in _SECRET_FLAGS:  # never echo a key
        return f"{_SECRET_FLAGS[field]}: {message}"
    return f"--{field.replace('_', '-')} {error.get('input')!r}: {message}"


_SECRET_FLAGS = {"api_keys": "--api-key", "admin_api_keys": "--admin-api-key"}


if __name__ == "__main__":
    sys.exit(main())
