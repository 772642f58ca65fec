"""Official Ovi fusion checkpoints (`model*.safetensors`, fp8 variant) -> `FusionModel`.

`FusionModel` names its modules after the official keys (`video_model.*`, `audio_model.*`), so
the conversion is the identity: no rename rules, no tensor surgery. The real files hold 2073
tensors (`shared/reference/layout/fusion.json`); RoPE tables are not among them, and the model
needs none (it computes RoPE per forward). Float8 files are computed in bf16: every floating
tensor is cast from its own file dtype to the compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..config import FusionConfig
from ..loading import StateDict, check_state_dict, expected_shapes, load_strict
from ..modules.fusion import FusionModel

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def convert_fusion_state(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official keys -> our keys: the identity (our module names are the official ones)."""
    return dict(state)


def load_fusion(
    state: Mapping[str, torch.Tensor],
    config: FusionConfig,
    *,
    source: str,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> FusionModel:
    """Build `FusionModel(config)` on meta and assign `state` strictly, cast to `dtype`, on `device`.

    Raises `CheckpointMismatchError` (naming keys and `source`) before any tensor is copied.
    With meta tensors and `device="meta"` nothing is allocated (layout checks).
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {dtype}")
    device = torch.device(device)
    state = convert_fusion_state(state)
    with torch.device("meta"):
        model = FusionModel(config)
    check_state_dict(expected_shapes(model), state, source)
    # one tensor at a time: cast from its file dtype (fp8/bf16/fp32) straight onto the device
    state = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in state.items()
    }
    load_strict(model, state, source)
    return model.requires_grad_(False).eval()


def random_fusion_state(
    config: FusionConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> StateDict:
    """Random official-format weights (the `tiny` preset, tests), like the reference's init:
    matrices/convs N(0, 1/fan_in), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2), norm
    biases N(0, 0.05^2), modulation tables N(0, 0.3^2). Nothing is zero."""
    with torch.device("meta"):
        shapes = expected_shapes(FusionModel(config))
    gen = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        module, leaf = key.rsplit(".", 2)[-2:]
        if leaf == "modulation":  # blocks.N.modulation.modulation, head.modulation
            value = 0.3 * noise
        elif "norm" in module:
            value = 1 + 0.1 * noise if leaf == "weight" else 0.05 * noise
        elif leaf == "bias":
            value = 0.05 * noise
        else:
            fan_in = noise[0].numel()
            value = noise / fan_in**0.5
        state[key] = value.to(dtype)
    return state
