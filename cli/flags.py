"""Flags generated from the library's option dataclasses, shared by every subcommand.

`add_option_flags(parser, RuntimeOptions)` turns each field into a flag: `--name-with-dashes`
(or the field's `flag`), its `help`, `store_true` for a bool, `--x/--no-x` for a negatable
`bool | None`, choices for a `Literal`. Every generated flag defaults to `None` ("not given"), so
the library's default applies in `ovi generate` and the environment or TOML file in `ovi serve`.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from model.options import RuntimeOptions, option_fields
from model.sampling import SamplingParams

if typing.TYPE_CHECKING:
    from model.pipeline import ModelSource


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_option_flags(parser: argparse._ActionsContainer, cls: type) -> None:
    """One flag per field of an `option(...)` dataclass (see the module docstring)."""
    for f, tp in option_fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": meta.get("help")}
        base = _unwrap_optional(tp)
        if base is bool:
            negatable = meta.get("negatable")
            kwargs["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
        elif typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            kwargs.update(choices=choices, type=type(choices[0]))
        elif typing.get_origin(base) is tuple:  # repeatable: `--lora A --lora B`
            kwargs.update(action="append", metavar=flag.lstrip("-").upper())
        elif base in (int, float, str):
            kwargs.update(type=base, metavar=flag.lstrip("-").replace("-", "_").upper())
        else:  # pragma: no cover - a new field type needs a rule here
            raise TypeError(f"no flag rule for {cls.__name__}.{f.name}: {tp}")
        parser.add_argument(flag, **kwargs)


def _resolution(value: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 512x992, got {value!r}") from None
    return h, w


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Which model (`--variant`/`--preset`, `--weights-dir`) and every `RuntimeOptions` flag."""
    from model.presets import DEFAULT_VARIANT, PRESETS

    real = [n for n, pr in PRESETS.items() if not pr.random_weights]
    fake = [n for n, pr in PRESETS.items() if pr.random_weights]
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--variant", choices=real, help=f"real model variant (default {DEFAULT_VARIANT})"
    )
    which.add_argument("--preset", choices=fake, help="random-weight preset for tests and demos")
    group.add_argument(
        "--weights-dir", type=Path, default=None, help="where `ovi weights` put the files"
    )
    add_option_flags(group, RuntimeOptions)


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """Every `SamplingParams` flag, and `--resolution HxW` for its height and width."""
    group = parser.add_argument_group("sampling (default: the variant's)")
    add_option_flags(group, SamplingParams)
    group.add_argument(
        "--resolution",
        type=_resolution,
        metavar="HxW",
        help="t2v size before snapping to the variant's area",
    )


def model_source(args: argparse.Namespace) -> ModelSource:
    from model.pipeline import ModelSource
    from model.presets import DEFAULT_VARIANT

    return ModelSource(args.preset or args.variant or DEFAULT_VARIANT, args.weights_dir)


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The `RuntimeOptions` the flags give (ValueError for a bad combination)."""
    return RuntimeOptions.from_mapping(vars(args))


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `SamplingParams` fields the flags give (the others keep the variant's defaults)."""
    values = {f.name: getattr(args, f.name, None) for f, _ in option_fields(SamplingParams)}
    if getattr(args, "resolution", None):
        values["height"], values["width"] = args.resolution
    return {k: v for k, v in values.items() if v is not None}
