"""8-bit DiT weights (opt-in, approximate): `RuntimeOptions.quantize`.

- `int8`: weight-only int8 with one scale per output channel (symmetric, absmax / 127); the
  weight is dequantised exactly (int8 -> compute dtype, times its scale) just before each
  matmul, so only one layer's weight exists in the compute dtype at a time. Half the block
  weight memory of bf16 (a quarter of fp32). Runs on every device.
- `fp8_row`: float8 e4m3 weights AND activations with row-wise scales (one per output channel,
  one per token) instead of `fp8.py`'s per-tensor scales, so one outlier token or channel no
  longer crushes the others. On CUDA `torch._scaled_mm` with [M, 1] and [1, N] scales and no
  activation padding copy; elsewhere the same quantisation with the product computed in
  float32 from the dequantised operands (the numerics, testable on a CPU).

Only the linears inside the blocks (attention, fusion, FFN) are quantised; embeddings, time
MLPs and heads keep the compute dtype, as `fp8.py`. `python -m bench.quality` prints the memory
saved and the error against the unquantised model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import FP8_DTYPE, FP8_MAX

INT8_MAX = 127.0


class Int8Linear(nn.Module):
    """`nn.Linear` with an int8 weight [out, in] and a float32 scale per output channel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # [out, in]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = (weight.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp(min=1e-12)  # [out, 1]
        quantised = torch.round(weight / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.weight = nn.Parameter(quantised, requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        bias = linear.bias
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight [out, in] in `dtype` (int8 values are exact in bf16/fp16/fp32)."""
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out] in x's dtype."""
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized(x.dtype), bias)


def _row_scale(x: torch.Tensor) -> torch.Tensor:
    """One float32 scale per row of x [R, C]: amax / 448, [R, 1]."""
    return (x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)


def _to_fp8_rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # divide in x's dtype: a bf16 activation gets no float32 copy
    return (x / scale.to(x.dtype)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


class Fp8RowLinear(nn.Module):
    """`nn.Linear` as float8 e4m3 x float8 e4m3 with row-wise scales (see the module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()  # [out, in]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = weight.dtype
        scale = _row_scale(weight)  # [out, 1]
        self.weight = nn.Parameter(_to_fp8_rows(weight.float(), scale), requires_grad=False)
        self.weight_scale = nn.Parameter(scale.t().contiguous(), requires_grad=False)  # [1, out]
        bias = linear.bias
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out] in the compute dtype."""
        rows = x.reshape(-1, self.in_features)  # [M, in]
        scale = _row_scale(rows).to(rows.dtype).float()  # [M, 1], the value the division used
        quantised = _to_fp8_rows(rows, scale)
        if rows.is_cuda:
            out = torch._scaled_mm(
                quantised,
                self.weight.t(),  # [in, out], column-major as _scaled_mm wants
                scale_a=scale,
                scale_b=self.weight_scale,
                out_dtype=torch.bfloat16,  # row-wise scaling computes into bf16
            ).to(self.out_dtype)
        else:  # the same quantisation, the product in float32
            weight = self.weight.float() * self.weight_scale.t()  # [out, in]
            out = ((quantised.float() * scale) @ weight.t()).to(self.out_dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


QUANTIZED = {"int8": Int8Linear, "fp8_row": Fp8RowLinear}


def _block_linears(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    for tower in (model.video_model, model.audio_model):
        for block in tower.blocks:
            for parent in block.modules():
                for name, child in parent.named_children():
                    if type(child) is nn.Linear:
                        yield parent, name, child


@torch.no_grad()
def quantize_blocks(model: nn.Module, mode: str) -> nn.Module:
    """Every plain `nn.Linear` inside the towers' blocks -> its 8-bit form (`QUANTIZED[mode]`).
    The original weights are released."""
    if mode not in QUANTIZED:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZED)}, got {mode!r}")
    for parent, name, child in list(_block_linears(model)):
        setattr(parent, name, QUANTIZED[mode](child))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
