"""Cheap previews of a clip while it denoises: latents -> RGB by one affine map, no VAE decode.

The map is fitted, not copied: `LatentPreview.fit(vae)` encodes a few synthetic images of
random colour blocks with the pipeline's own Wan VAE and solves the least-squares problem
`rgb ~ latent @ weight + bias` over every latent pixel (48 channels -> 3). So it matches whatever
VAE is loaded (the real Wan2.2 one or a preset's random one) and costs one small encode per
process. A preview is one latent frame, `h x w` pixels (the clip's size / 16): a colour sketch
of the current estimate, not a decoded frame.

Shapes: latents `[B, C, F, h, w]` (C = the VAE's z_dim), images `[K, 3, H, W]` in [-1, 1].
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .modules.video_vae import VideoVAE

FIT_IMAGES = 8  # synthetic images per fit
FIT_SIZE = 128  # their side, in pixels (8 x 8 latent pixels each at 16x compression)


def colour_blocks(count: int, size: int, block: int, seed: int = 0) -> torch.Tensor:
    """`count` images [count, 3, size, size] in [-1, 1] of random flat colour squares of side
    `block`: each latent pixel sees (mostly) one colour, which is what the map must recover."""
    generator = torch.Generator().manual_seed(seed)
    cells = size // block
    colours = torch.rand(count, 3, cells, cells, generator=generator) * 2 - 1
    return colours.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)


class LatentPreview:
    """An affine map latent channels -> RGB: `weight` [C, 3], `bias` [3], both float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        if weight.ndim != 2 or weight.shape[1] != 3 or bias.shape != (3,):
            raise ValueError(f"weight must be [C, 3] and bias [3], got {list(weight.shape)}")
        self.weight = weight.float().cpu()
        self.bias = bias.float().cpu()

    @classmethod
    @torch.no_grad()
    def fit(
        cls, vae: VideoVAE, *, images: int = FIT_IMAGES, size: int = FIT_SIZE, seed: int = 0
    ) -> LatentPreview:
        """Fit the map to `vae` (on the device and in the dtype its weights are on)."""
        step = vae.config.spatial_compression
        pixels = colour_blocks(images, size, 2 * step, seed)  # [K, 3, S, S]
        latent = vae.encode_image(pixels).float().cpu()  # [K, C, 1, S/16, S/16]
        k, channels, _, h, w = latent.shape
        # target: the image averaged over each latent pixel's 16 x 16 patch
        target = torch.nn.functional.avg_pool2d(pixels, step)  # [K, 3, h, w]
        x = latent[:, :, 0].permute(0, 2, 3, 1).reshape(k * h * w, channels)  # [K*h*w, C]
        y = target.permute(0, 2, 3, 1).reshape(k * h * w, 3)  # [K*h*w, 3]
        x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # bias column
        # ridge-regularised least squares: fewer samples than unknowns must still solve
        gram = x1.T @ x1 + 1e-3 * torch.eye(channels + 1)
        solution = torch.linalg.solve(gram, x1.T @ y)  # [C + 1, 3]
        return cls(solution[:channels], solution[channels])

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, frame: int | None = None) -> np.ndarray:
        """latents [B, C, F, h, w] (or [C, F, h, w]) -> uint8 RGB [h, w, 3] of latent frame
        `frame` (default: the middle one) of the first clip."""
        if latents.ndim == 4:
            latents = latents.unsqueeze(0)
        if latents.ndim != 5 or latents.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"latents must be [B, {self.weight.shape[0]}, F, h, w], got {list(latents.shape)}"
            )
        index = latents.shape[2] // 2 if frame is None else frame
        chosen = latents[0, :, index].float().cpu()  # [C, h, w]
        rgb = torch.einsum("chw,cd->hwd", chosen, self.weight) + self.bias  # [h, w, 3]
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 [h, w, 3] -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
