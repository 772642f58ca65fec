"""Reading checkpoint files and loading them strictly: the one load skeleton of every family.

Every component is built on the meta device and receives its weights with `assign=True`, so a
checkpoint is never held twice in memory. Loading is always strict: a missing key, an
unexpected key or a wrong shape raises `CheckpointMismatchError`, which names the keys and the
file. Converters (`model/convert/<family>.py`) only rename and reshape dicts and describe their
family with one `CheckpointFamily`; this module reads, checks, places and assigns.

`CheckpointFamily.load` is the skeleton they all share:

    1. build the module on the meta device (nothing allocated)
    2. convert the file's dict to the module's keys (the family's rules; a key no rule knows is
       an error that names it)
    3. check keys and shapes strictly, before any tensor is copied
    4. place every tensor on the device in the compute dtype, one tensor at a time
    5. assign, then finish what no file holds (tied tables, constant buffers); eval, no grad

`random_state` is the matching skeleton of the random-weight helpers (`random_*_state`): the
file's layout, one seeded normal draw per tensor in layout order, shaped by the family's rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from .errors import CheckpointMismatchError, WeightFileMissingError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
M = TypeVar("M", bound=nn.Module)


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


def place(
    state: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> StateDict:
    """Every tensor to `device`, floating ones cast to `dtype`, one tensor at a time (a tensor
    already there in that dtype is kept as it is: no copy)."""
    return {
        k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
        for k, v in state.items()
    }


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
        state = place(state, dtype)
    incompatible = module.load_state_dict(dict(state), strict=False, assign=True)
    leftover = [k for k in incompatible.missing_keys if k not in computed]
    if leftover or incompatible.unexpected_keys:  # cannot happen after check_state_dict
        raise CheckpointMismatchError(source, leftover, list(incompatible.unexpected_keys), [])
    return module


Init = Callable[[str, tuple[int, ...], torch.Tensor], torch.Tensor]


def random_state(
    shapes: Mapping[str, tuple[int, ...]],
    init: Init,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> StateDict:
    """Random weights in a file's layout: for each key in order one N(0, 1) draw of its shape
    (float32, from one generator seeded with `seed` on `device`), turned into the value by
    `init(key, shape, noise)`, then cast to `dtype`. On the CPU the values depend only on the
    seed; on another device they are that device's generator's draws (same distributions)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    return {
        key: init(key, shape, torch.randn(shape, generator=gen, device=device)).to(dtype)
        for key, shape in shapes.items()
    }


Converter = Callable[[Mapping[str, torch.Tensor], Any, str, torch.device], StateDict]


def _same(module: nn.Module) -> nn.Module:
    return module


@dataclass(frozen=True)
class CheckpointFamily(Generic[M]):
    """One family of official checkpoint files and the module it loads into.

    build(config): the module (called on the meta device). convert(state, module, source,
    device): the file's dict -> the module's keys; it may check the file's own spelling first,
    and may compute load-time transforms on `device` (in float32). target(module): the submodule
    the keys belong to (a wrapper holding the checkpoint's network). computed: buffers no file
    holds; finish(module) fills them (and restores ties `assign` broke). layout(config): the
    file's keys and shapes, in the file's order (default: the target module's own, for families
    whose conversion is the identity); init: how a random weight is drawn (`random_state`).
    """

    name: str
    build: Callable[[Any], M]
    convert: Converter
    default_dtype: torch.dtype = torch.float32
    target: Callable[[M], nn.Module] = _same
    computed: tuple[str, ...] = ()
    finish: Callable[[M], None] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None  # the compute dtypes allowed; None: any
    layout: Callable[[Any], Mapping[str, tuple[int, ...]]] | None = None
    init: Init | None = None

    def load(
        self,
        state: Mapping[str, torch.Tensor],
        config: Any,
        *,
        source: str,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> M:
        """Official `state` -> the ready module on `device`, floating weights in `dtype`.

        Raises `CheckpointMismatchError` (naming keys and `source`) before any tensor is copied.
        With meta tensors and `device="meta"` nothing is allocated (full-size layout checks).
        """
        dtype = self.default_dtype if dtype is None else dtype
        if self.dtypes is not None and dtype not in self.dtypes:
            raise ValueError(f"{self.name} compute dtype must be one of {self.dtypes}, got {dtype}")
        device = torch.device(device)
        # 1. the module, on meta
        with torch.device("meta"):
            module = self.build(config)
        target = self.target(module)
        # 2. the family's rules
        converted = self.convert(state, module, source, device)
        # 3. strict check, 4. placement (one tensor at a time), 5. assignment
        check_state_dict(expected_shapes(target, skip=self.computed), converted, source)
        load_strict(target, place(converted, dtype, device), source, computed=self.computed)
        if self.finish is not None:
            self.finish(module)
        return module.eval().requires_grad_(False)

    def file_layout(self, config: Any) -> dict[str, tuple[int, ...]]:
        """Keys and shapes of an official file for `config`, in the file's order."""
        if self.layout is not None:
            return dict(self.layout(config))
        with torch.device("meta"):
            return expected_shapes(self.target(self.build(config)), skip=self.computed)

    def random_state(
        self,
        config: Any,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> StateDict:
        """Random weights in the official file format (the random-weight presets, tests, the
        benchmark on its device): `random_state` over `file_layout(config)` with `init`."""
        if self.init is None:
            raise NotImplementedError(f"{self.name} has no random initialisation")
        return random_state(self.file_layout(config), self.init, seed, dtype, device)


def count_elements(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def meta_state_dict(shapes: Mapping[str, Iterable[int]], dtype: torch.dtype) -> StateDict:
    """Shape-only tensors standing in for a checkpoint (full-size layout checks)."""
    return {k: torch.empty(tuple(s), dtype=dtype, device="meta") for k, s in shapes.items()}
