"""Reading checkpoint files and loading them strictly.

Every component is built on the meta device and receives its weights with `assign=True`, so a
checkpoint is never held twice in memory. Loading is always strict: a missing key, an
unexpected key or a wrong shape raises `CheckpointMismatchError`, which names the keys and the
file. Converters (`model/convert/`) only rename and reshape dicts; this module only reads and
assigns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointMismatchError, WeightFileMissingError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


def read_checkpoint(path: Path | str, inner_key: str | None = None) -> StateDict:
    """Read a `.safetensors` or `.pth`/`.pt` file into a flat `{key: tensor}` dict.

    safetensors files are memory-mapped; pickles are read with `weights_only=True, mmap=True`.
    `inner_key` selects a nested dict (BigVGAN's `best_netG.pt` keeps its weights under
    "generator").
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileMissingError(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if inner_key is not None:
        if not isinstance(state, Mapping) or inner_key not in state:
            raise CheckpointMismatchError(str(path), [inner_key], [], [])
        state = state[inner_key]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return dict(state)


def expected_shapes(module: nn.Module, skip: Iterable[str] = ()) -> dict[str, tuple[int, ...]]:
    """Keys and shapes a strict load into `module` must provide (minus `skip`)."""
    skipped = set(skip)
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in skipped}


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise `CheckpointMismatchError` unless `state` has exactly the expected keys and shapes."""
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = [
        (k, tuple(state[k].shape), tuple(expected[k]))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(source, missing, unexpected, wrong)


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    dtype: torch.dtype | None = None,
    computed: Iterable[str] = (),
) -> nn.Module:
    """Assign `state` into `module` (usually built on the meta device), strictly.

    `dtype` casts floating-point tensors (e.g. float8 or bf16 files computed in bf16, or fp32 on
    CPU). `computed` names buffers the module computes itself (never in a file); they are left
    as they are, and the caller materialises them if the module was built on meta.
    """
    computed = set(computed)
    check_state_dict(expected_shapes(module, skip=computed), state, source)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    incompatible = module.load_state_dict(dict(state), strict=False, assign=True)
    leftover = [k for k in incompatible.missing_keys if k not in computed]
    if leftover or incompatible.unexpected_keys:  # cannot happen after check_state_dict
        raise CheckpointMismatchError(source, leftover, list(incompatible.unexpected_keys), [])
    return module


def count_elements(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def meta_state_dict(shapes: Mapping[str, Iterable[int]], dtype: torch.dtype) -> StateDict:
    """Shape-only tensors standing in for a checkpoint (layout conformance)."""
    return {k: torch.empty(tuple(s), dtype=dtype, device="meta") for k, s in shapes.items()}
