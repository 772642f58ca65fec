"""Checks of a generation request that need no model: the CLI runs them before building one,
and `OviPipeline` runs the same ones (`check_inputs`, and the device when it is planned)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .presets import Preset
    from .sampling import SamplingParams


def check_request(preset: Preset, prompt: str, params: SamplingParams) -> None:
    """What `OviPipeline.check_inputs` checks, without a pipeline: callers (the CLI) refuse a
    bad prompt or parameter before any model is built. ValueError naming the first bad value."""
    check_prompt(prompt)
    params.check(preset.config.fusion.video.num_layers)


def check_prompt(prompt: object) -> None:
    """ValueError unless `prompt` is a string: the CLI, the pipeline and the API share it. An
    empty prompt is fine, as on fal (the official release generates from it too)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")


def check_device(device: str | None) -> None:
    """ValueError when `device` names CUDA and this torch cannot use it (a CPU build, no GPU)."""
    if device is None or not device.startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    why = "is a CPU-only build" if torch.version.cuda is None else "sees no CUDA GPU"
    raise ValueError(
        f"--device {device}: this torch ({torch.__version__}) {why}; use --device cpu, or run"
        " on a GPU host with a CUDA build of torch (`make install TORCH_SPEC=torch`)"
    )
