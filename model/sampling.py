"""SamplingParams: the per-request knobs of one clip, spelled once.

The pipeline call, the denoise loop, the `ovi` CLI (`cli/flags.py` generates the flags from the
fields) and the server's fal mapping (`server/worker.py`) all take this one object. Each variant's
defaults are a `SamplingParams` too (`Preset.sampling`, the official `inference_fusion.yaml`); a
request is those defaults with its own values `replace`d in.

Sizes are `(height, width)` in pixels everywhere inside; fal's `"WxH"` strings are parsed at the
API edge only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .options import NOISE_MODES, NoiseMode, option

Solver = Literal["unipc", "dpm++", "euler"]
SOLVERS: tuple[str, ...] = ("unipc", "dpm++", "euler")

DEFAULT_VIDEO_NEGATIVE_PROMPT = "jitter, bad hands, blur, distortion"
DEFAULT_AUDIO_NEGATIVE_PROMPT = "robotic, muffled, echo, distorted"

MAX_SEED = 2**31 - 1  # a drawn seed fits every client's integer type (JS numbers included)
# What `torch.Generator.manual_seed` accepts: a negative seed is taken modulo 2**64 by torch.
SEED_RANGE = (-(2**63), 2**64 - 1)
MAX_STEPS = 1000


@dataclass(frozen=True)
class SamplingParams:
    """One clip's sampling settings. The defaults are the official release's."""

    steps: int = option(50, "denoising steps (variant default: 50)")
    solver: Solver = option("unipc", "flow solver (default unipc)")
    shift: float = option(5.0, "timestep shift of the flow schedule (default 5.0)")
    video_guidance_scale: float = option(
        4.0, "video CFG scale (default 4.0)", flag="--video-guidance"
    )
    audio_guidance_scale: float = option(
        3.0, "audio CFG scale (default 3.0)", flag="--audio-guidance"
    )
    # The block skipped in the negative pass (skip-layer guidance); None (or -1, 0) = off.
    slg_layer: int | None = option(11, "block skipped in the negative pass; -1 = off (default 11)")
    video_negative_prompt: str = option(
        DEFAULT_VIDEO_NEGATIVE_PROMPT, "video negative prompt", flag="--negative-prompt"
    )
    audio_negative_prompt: str = option(DEFAULT_AUDIO_NEGATIVE_PROMPT, "audio negative prompt")
    seed: int | None = option(None, "random seed (default: random, always reported)")
    # None: the pipeline's `RuntimeOptions.noise` (the CLI spells it --noise, a runtime flag).
    noise: NoiseMode | None = option(
        None, "initial noise procedure (official, portable)", cli=False
    )
    # t2v: the requested size, snapped to the variant's area; i2v follows the image instead.
    height: int = option(512, "t2v height before snapping to the variant's area", cli=False)
    width: int = option(992, "t2v width before snapping to the variant's area", cli=False)

    def __post_init__(self) -> None:
        if self.slg_layer in (-1, 0):  # as the official release: only a layer > 0 is skipped
            object.__setattr__(self, "slg_layer", None)

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with `changes`; `None` values keep the current value (a knob not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check(self, num_layers: int) -> None:
        """Raise ValueError naming the first bad value (`num_layers`: the DiT's depth)."""
        steps = self.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if self.slg_layer is not None and not 0 <= self.slg_layer < num_layers:
            raise ValueError(
                f"slg_layer must be in -1..{num_layers - 1} (-1 = off), got {self.slg_layer}"
            )
        for name in ("height", "width"):
            value = getattr(self, name)
            if not 32 <= value <= 4096:
                raise ValueError(f"{name} must be in 32..4096 pixels, got {value}")
        low, high = SEED_RANGE
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not low <= self.seed <= high
        ):
            raise ValueError(f"seed must be an integer in {low}..{high}, got {self.seed!r}")
        if self.noise is not None and self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
