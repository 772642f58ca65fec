"""The Wan VAE decode split across ranks by latent rows, exactly.

A split by latent frames cannot be exact: the decoder's causal convolutions reach about 37
latent frames back (more than a whole 5 s clip). A split by rows can: every rank decodes a band
of latent rows through the same frame-by-frame loop, and each operation that reaches across
rows gets what the whole image would give it:

- every 3x3(x3) convolution (the causal 3-D ones and the 2-D ones after each nearest upsampler)
  first receives one row from each neighbouring band (`exchange_halo`: an all-gather of
  2 x [B, C, t, 1, W] edge rows per call; zero rows at the image borders, as zero padding);
- the decoder's mid-block attention (one head over all pixels of a frame) gathers the frame's
  rows, attends on every rank and keeps its band (at latent resolution: small);
- everything else (RMS norms over channels, SiLU, nearest upsampling, the residual DupUp3D
  shortcut, the final 2x2 unpatchify, clamping) is per pixel.

The bands are then all-gathered (padded to the largest). Rows are split as evenly as possible;
with fewer latent rows than ranks every rank decodes the whole image.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanAttentionBlock,
    WanCausalConv3d,
    WanResample,
)
from torch import nn

from .comm import exchange_halo, gather_bands, group_rank, group_size
from .groups import even_split

logger = logging.getLogger(__name__)

ROWS = 3  # the row dim of the decoder's [B, C, T, H, W] features


def _causal_conv_forward(conv: WanCausalConv3d, group: Any) -> Any:
    """`WanCausalConv3d.forward` with the row padding replaced by the neighbours' rows."""

    def forward(self: WanCausalConv3d, x: torch.Tensor, cache_x: torch.Tensor | None = None):
        padding = list(self._padding)  # (w, w, h, h, 2 * t, 0)
        if cache_x is not None and self._padding[4] > 0:
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            padding[4] -= cache_x.shape[2]
        x = exchange_halo(x, padding[2], group, dim=ROWS)  # [B, C, t, h + 2p, W]
        padding[2] = padding[3] = 0
        return nn.Conv3d.forward(self, F.pad(x, padding))

    return types.MethodType(forward, conv)


def _conv2d_forward(conv: nn.Conv2d, group: Any) -> Any:
    """A zero-padded 2-D conv ([B*T, C, h, W]) with its row padding from the neighbours."""
    rows, cols = conv.padding

    def forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        x = exchange_halo(x, rows, group, dim=2)  # [B*T, C, h + 2 rows, W]
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, cols), self.dilation)

    return types.MethodType(forward, conv)


def _attention_forward(block: WanAttentionBlock, group: Any, bounds: list[tuple[int, int]]):
    """The mid-block attention on the whole frame: gather the bands, attend, keep ours."""
    original = type(block).forward
    me = group_rank(group)

    def forward(self: WanAttentionBlock, x: torch.Tensor) -> torch.Tensor:
        scale = x.shape[ROWS] // (bounds[me][1] - bounds[me][0])
        scaled = [(s * scale, e * scale) for s, e in bounds]
        whole = gather_bands(x, scaled, group, dim=ROWS)  # [B, C, t, H, W]
        start, end = scaled[me]
        return original(self, whole)[:, :, :, start:end]

    return types.MethodType(forward, block)


@contextlib.contextmanager
def banded_decoder(decoder: nn.Module, group: Any, bounds: list[tuple[int, int]]) -> Iterator[None]:
    """Within: `decoder` computes the band `bounds[rank]` of rows of the whole image."""
    patched: list[nn.Module] = []
    for module in decoder.modules():
        if isinstance(module, WanCausalConv3d) and module._padding[2] > 0:
            module.forward = _causal_conv_forward(module, group)
        elif isinstance(module, WanResample):
            convs = [m for m in module.resample if isinstance(m, nn.Conv2d)]
            if module.mode not in ("upsample2d", "upsample3d"):
                raise ValueError(f"row-split decode: unexpected resample mode {module.mode!r}")
            for conv in convs:
                conv.forward = _conv2d_forward(conv, group)
                patched.append(conv)
            continue
        elif isinstance(module, WanAttentionBlock):
            module.forward = _attention_forward(module, group, bounds)
        else:
            continue
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def decode_video(video_vae: nn.Module, latent: torch.Tensor, group: Any) -> torch.Tensor:
    """`video_vae.decode(latent)` ([B, 48, F, h, w] -> [B, 3, T, 16h, 16w]) with the rows split
    over the ranks of `group`; every rank returns the whole video."""
    n, me = group_size(group), group_rank(group)
    rows = latent.shape[ROWS]
    if n == 1 or rows < n:
        if n > 1:
            logger.info("VAE decode: %d latent rows for %d ranks; decoding whole", rows, n)
        return video_vae.decode(latent)
    if getattr(video_vae.vae, "use_tiling", False):
        raise ValueError("the row-split VAE decode does not combine with VAE tiling")
    bounds = even_split(rows, n)
    start, end = bounds[me]
    # The band patches the decoder modules' forwards, which diffusers' own frame loop calls (the
    # decode in pieces calls the convolutions directly): that loop, on 1/n of the rows each.
    pieces, video_vae.tail_frames = video_vae.tail_frames, None
    try:
        with banded_decoder(video_vae.vae.decoder, group, bounds):
            band = video_vae.decode(latent[:, :, :, start:end])  # [B, 3, T, s * (end - start), W]
    finally:
        video_vae.tail_frames = pieces
    scale = band.shape[ROWS] // (end - start)
    return gather_bands(band, [(s * scale, e * scale) for s, e in bounds], group, dim=ROWS)
