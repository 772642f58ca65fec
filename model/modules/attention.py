"""The single attention entry point of the model code.

Every attention in `model/` calls `attention(q, k, v)`. Layout is the flash-attn one,
`[B, L, heads, head_dim]` (what the DiT has right after splitting heads), the scale is
1/sqrt(head_dim) and there is no mask: Ovi attends to every key (text rows included, see
`modules/fusion.py`). The backend is picked once per (device, dtype) and never by the caller:

- `fa3`: FlashAttention-3 (`flash_attn_interface.flash_attn_func`) when importable, on CUDA,
  for bf16/fp16 and head_dim <= 256;
- `sdpa-cuda`: torch SDPA with a preference list (cuDNN, flash, memory-efficient, math);
  SDPA takes the first one that supports the inputs;
- `sdpa`: plain torch SDPA (CPU, or any other device).

`attention_backend(device, dtype)` says which one a call would use (for logs and benchmarks);
`force_backend("sdpa")` pins plain SDPA for comparisons, `force_backend(None)` undoes it.
`set_cuda_sdpa_preference([...])` reorders or trims the CUDA SDPA list (the fast path's startup
check in `model/optimize/fast_path.py` drops backends that fail on the machine).
`set_shape_backends({...})` pins one backend per attention shape (the fast path's choice from
timings, `choose_attention_backends`, among the backends the startup check kept).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

logger = logging.getLogger(__name__)

Backend = Literal["fa3", "sdpa-cuda", "sdpa"]

try:  # FlashAttention-3 (Hopper); optional
    from flash_attn_interface import flash_attn_func as _fa3_func
except ImportError:  # pragma: no cover - depends on the machine
    _fa3_func = None

# SDPA on CUDA: the first backend in this list that accepts the inputs runs.
_CUDA_SDPA_PREFERENCE = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]

DEFAULT_CUDA_SDPA_PREFERENCE = tuple(_CUDA_SDPA_PREFERENCE)
_SDPA_BY_NAME = {b.name: b for b in DEFAULT_CUDA_SDPA_PREFERENCE}

_forced: Backend | None = None
_logged: set[tuple[str, torch.dtype, Backend]] = set()

# Per attention shape (Lq, Lk, heads, head_dim, dtype): the backend chosen from timings
# ("FA3" or an `SDPBackend` name), set before the first step (`set_shape_backends`); a shape
# not listed takes the automatic choice. A compiled graph reads its shapes' entries when traced
# (constants: a new shape's entry recompiles nothing), so fill them before the first step.
ShapeKey = tuple[int, int, int, int, torch.dtype]
_by_shape: dict[ShapeKey, str] = {}
_by_shape_on = False  # whether the table has entries (a graph guards on this flag only)


@torch.compiler.assume_constant_result
def _shape_backend(lq: int, lk: int, heads: int, head_dim: int, dtype: torch.dtype) -> str:
    """The table's entry for a shape ("" when none). A constant of the compiled graph, with no
    guard on the table: adding another shape's entry recompiles nothing, and an entry set after
    its shape was compiled is not seen by that graph (set them before the first step)."""
    return _by_shape.get((lq, lk, heads, head_dim, dtype), "")


def shape_key(q: torch.Tensor, k: torch.Tensor) -> ShapeKey:
    """The key of `set_shape_backends` for q [B, Lq, H, D], k [B, Lk, H, D]."""
    return (q.shape[1], k.shape[1], q.shape[2], q.shape[3], q.dtype)


def set_shape_backends(table: dict[ShapeKey, str] | None) -> None:
    """Pin a backend per attention shape ("FA3" or an SDPBackend name such as
    "FLASH_ATTENTION"); None or {} clears the table. A forced backend (`force_backend`) wins."""
    for name in (table or {}).values():
        if name != "FA3" and name not in _SDPA_BY_NAME:
            raise ValueError(f"unknown attention backend {name!r}")
    global _by_shape_on
    _by_shape.clear()
    _by_shape.update(table or {})
    _by_shape_on = bool(_by_shape)


def shape_backends() -> dict[ShapeKey, str]:
    return dict(_by_shape)


def run_backend(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`attention` on one named backend ("FA3" or an SDPBackend name), nothing else tried."""
    if name == "FA3":
        if _fa3_func is None:
            raise ValueError(
                "attention backend 'FA3' requested but flash_attn_interface is missing"
            )
        out = _fa3_func(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False)
        return out[0] if isinstance(out, tuple) else out
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    with sdpa_kernel([_SDPA_BY_NAME[name]]):
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)


def force_backend(name: Backend | None) -> None:
    """Pin a backend (`"sdpa"`/`"sdpa-cuda"`/`"fa3"`) for every call, or `None` to auto-pick."""
    global _forced
    if name not in (None, "fa3", "sdpa-cuda", "sdpa"):
        raise ValueError(f"unknown attention backend {name!r}")
    if name == "fa3" and _fa3_func is None:
        raise ValueError("attention backend 'fa3' requested but flash_attn_interface is missing")
    _forced = name


def set_cuda_sdpa_preference(backends: list[SDPBackend] | None) -> None:
    """The SDPA backends `sdpa-cuda` may use, best first; `None` restores the default order."""
    chosen = list(DEFAULT_CUDA_SDPA_PREFERENCE if backends is None else backends)
    if not chosen:
        raise ValueError("the CUDA SDPA preference list needs at least one backend")
    if SDPBackend.MATH not in chosen:
        chosen.append(SDPBackend.MATH)  # always a fallback that takes any input
    _CUDA_SDPA_PREFERENCE[:] = chosen


def cuda_sdpa_preference() -> list[SDPBackend]:
    return list(_CUDA_SDPA_PREFERENCE)


def fa3_available() -> bool:
    """Whether FlashAttention-3 (`flash_attn_interface`) imported."""
    return _fa3_func is not None


def forced_backend() -> Backend | None:
    """The backend pinned by `force_backend`, or None when it is picked automatically."""
    return _forced


def attention_backend(
    device: torch.device | str, dtype: torch.dtype, head_dim: int = 128
) -> Backend:
    """The backend `attention` uses for tensors of this device and dtype."""
    device = torch.device(device)
    if _forced is not None:
        return _forced
    if device.type != "cuda":
        return "sdpa"
    if _fa3_func is not None and dtype in (torch.bfloat16, torch.float16) and head_dim <= 256:
        return "fa3"
    return "sdpa-cuda"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v, no mask.

    q: [B, Lq, H, D], k/v: [B, Lk, H, D] (same dtype) -> [B, Lq, H, D] in q's dtype.
    """
    if _by_shape_on and _forced is None:
        chosen = _shape_backend(*shape_key(q, k))
        if chosen:
            return run_backend(chosen, q, k, v)
    backend = attention_backend(q.device, q.dtype, q.shape[-1])
    key = (q.device.type, q.dtype, backend)
    if not torch.compiler.is_compiling() and key not in _logged:  # no side effects in a trace
        _logged.add(key)
        logger.info("attention backend: %s (%s, %s)", backend, q.device.type, q.dtype)

    if backend == "fa3":
        out = _fa3_func(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False)
        return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the LSE

    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, L, D] for SDPA
    if backend == "sdpa-cuda":
        with sdpa_kernel(_CUDA_SDPA_PREFERENCE, set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)  # [B, Lq, H, D]
