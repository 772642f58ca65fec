"""fp8 compute (opt-in): the DiT's block linears as float8 e4m3 `torch._scaled_mm`.

Per-tensor scales: the weight's once, each activation's per call, on the device (no host sync).
Approximate: `python -m bench` measures the error and the speed; `RuntimeOptions.fp8_compute`
turns it on (CUDA only). The float8 *file* (`RuntimeOptions.fp8`) is a storage format, computed
in bf16 unless this is on too.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.fusion import FusionModel

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALED_MM_ALIGN = 16  # torch._scaled_mm wants every GEMM dimension a multiple of 16 on CUDA


def _fp8_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor scale, float32 0-dim, on x's device (no host sync): amax / 448."""
    return (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12)


def _to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # in x's dtype (a 0-dim fp32 scale does not promote): a bf16 activation gets no fp32 copy,
    # which would be 3.4 GB for the FFN's hidden rows at 704x704x121 (bench/memory.py)
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


class Fp8Linear(nn.Module):
    """`nn.Linear` computed as float8 e4m3 x float8 e4m3 -> compute dtype (`torch._scaled_mm`).

    Weight: quantised once with a per-tensor scale. Activations: quantised per call with a
    per-tensor scale computed on the device. The bias is added in the GEMM epilogue.
    `original` keeps the bf16 module when asked (`disable_fp8` restores it).
    """

    def __init__(self, linear: nn.Linear, keep_original: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach()  # [out, in]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = weight.dtype
        scale = _fp8_scale(weight)
        self.weight = nn.Parameter(_to_fp8(weight, scale), requires_grad=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.original = [linear] if keep_original else []  # a list: not a registered submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out] in the compute dtype."""
        rows = x.reshape(-1, self.in_features)  # [M, in]
        m = rows.shape[0]
        pad = -m % SCALED_MM_ALIGN
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))  # zero rows: no effect on the scale
        scale = _fp8_scale(rows)
        out = torch._scaled_mm(
            _to_fp8(rows, scale),
            self.weight.t(),  # [in, out], column-major as _scaled_mm wants
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=self.out_dtype,
        )
        return out[:m].reshape(*x.shape[:-1], self.out_features)


def _block_linears(model: FusionModel) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    for tower in (model.video_model, model.audio_model):
        for block in tower.blocks:
            for parent in block.modules():
                for name, child in parent.named_children():
                    if isinstance(child, nn.Linear | Fp8Linear):
                        yield parent, name, child


def enable_fp8(model: FusionModel, keep_original: bool = False) -> FusionModel:
    """Every linear inside the blocks (attention, fusion, FFN) -> `Fp8Linear`. Embeddings, time
    MLPs and heads stay in the compute dtype. Halves the block weight memory unless
    `keep_original` (which keeps the bf16 modules for `disable_fp8`)."""
    for parent, name, child in list(_block_linears(model)):
        if isinstance(child, nn.Linear):
            setattr(parent, name, Fp8Linear(child, keep_original))
    return model


def disable_fp8(model: FusionModel) -> FusionModel:
    for parent, name, child in list(_block_linears(model)):
        if isinstance(child, Fp8Linear):
            if not child.original:
                raise ValueError("fp8 was enabled without keep_original: reload the weights")
            setattr(parent, name, child.original[0])
    return model
