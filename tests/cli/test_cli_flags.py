"""cli/flags.py: flags generated from RuntimeOptions and SamplingParams."""

import argparse
import dataclasses

import pytest

from cli.flags import add_option_flags, runtime_options, sampling_overrides
from model.options import RuntimeOptions, option
from model.sampling import SamplingParams


def _parser(*classes: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    for cls in classes:
        add_option_flags(parser, cls)
    return parser


def test_a_new_field_is_a_new_flag():
    @dataclasses.dataclass(frozen=True)
    class Knobs:
        blur: bool = option(False, "blur every frame")
        strength: float = option(1.0, "how much")
        mode: str | None = option(None, "which mode", flag="--the-mode")
        auto: bool | None = option(None, "decide from the device", negatable=True)
        hidden: int = option(0, "not a flag", cli=False)

    parser = _parser(Knobs)
    args = parser.parse_args(["--blur", "--strength", "0.5", "--the-mode", "x", "--no-auto"])
    assert vars(args) == dict(blur=True, strength=0.5, mode="x", auto=False)
    assert vars(parser.parse_args([])) == dict(blur=None, strength=None, mode=None, auto=None)


def test_runtime_and_sampling_flags_round_trip():
    parser = _parser(RuntimeOptions, SamplingParams)
    args = parser.parse_args(
        ["--cpu-offload", "--dtype", "float16", "--no-fast-path", "--steps", "9", "--solver",
         "euler", "--negative-prompt", "blurry", "--slg-layer", "-1"]
    )  # fmt: skip
    assert runtime_options(args) == RuntimeOptions(
        cpu_offload=True, dtype="float16", fast_path=False
    )
    params = SamplingParams().replace(**sampling_overrides(args))
    assert (params.steps, params.solver, params.video_negative_prompt) == (9, "euler", "blurry")
    assert params.slg_layer is None
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--solver", "ddim"])
