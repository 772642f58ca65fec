"""Official Ovi fusion checkpoints (`model*.safetensors`, fp8 variant) -> `FusionModel`.

`FusionModel` names its modules after the official keys (`video_model.*`, `audio_model.*`), so
the conversion is the identity: no rename rules, no tensor surgery. The real files hold 2073
tensors (`shared/reference/layout/fusion.json`); RoPE tables are not among them, and the model
needs none (it computes RoPE per forward). Float8 files are computed in bf16: every floating
tensor is cast from its own file dtype to the compute dtype, one tensor at a time, straight onto
the device (`CheckpointFamily.load`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..loading import CheckpointFamily, StateDict
from ..modules.fusion import FusionModel

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def convert_fusion_state(state: Mapping[str, torch.Tensor], *_: object) -> StateDict:
    """Official keys -> our keys: the identity (our module names are the official ones)."""
    return dict(state)


def _init(key: str, shape: tuple[int, ...], noise: torch.Tensor) -> torch.Tensor:
    """The reference's init: matrices/convs N(0, 1/fan_in), biases N(0, 0.05^2), norm weights
    1 + N(0, 0.1^2), norm biases N(0, 0.05^2), modulation tables N(0, 0.3^2). Nothing is zero."""
    module, leaf = key.rsplit(".", 2)[-2:]
    if leaf == "modulation":  # blocks.N.modulation.modulation, head.modulation
        return 0.3 * noise
    if "norm" in module:
        return 1 + 0.1 * noise if leaf == "weight" else 0.05 * noise
    if leaf == "bias":
        return 0.05 * noise
    return noise / noise[0].numel() ** 0.5  # matrices and convs: N(0, 1/fan_in)


FUSION = CheckpointFamily(
    name="fusion",
    build=FusionModel,
    convert=convert_fusion_state,
    default_dtype=torch.bfloat16,
    dtypes=COMPUTE_DTYPES,
    init=_init,  # layout: the model's own keys (the conversion is the identity)
)
# (state, FusionConfig, *, source, dtype=bf16, device="cpu") -> FusionModel
load_fusion = FUSION.load
# (config, seed=0, dtype=fp32, device=None) -> official-format random weights (`_init`)
random_fusion_state = FUSION.random_state
