"""The Wan2.2 video VAE: pixels [-1, 1] <-> the normalised 48-channel latents the DiT sees.

Shapes: video `[B, 3, T, H, W]` with T = 1 + 4k and H, W multiples of 16; latent
`[B, 48, 1 + (T - 1) // 4, H / 16, W / 16]`. The network is diffusers' `AutoencoderKLWan` in its
Wan2.2 form (residual up/down blocks, 2x2 pixel patchify, 12 in/out channels), which computes the
official `WanVAE_` including its causal chunking (frame 0 alone, then groups of 4 frames when
encoding; one latent frame at a time when decoding). What diffusers leaves out is added here:

* the per-channel latent statistics: latent = (mu - mean) / std after encoding (posterior mean,
  never a sample) and z * std + mean before decoding; `mean`/`std` are non-persistent buffers
  (constants of `WanVAEConfig`, not in the checkpoint);
* an unclamped decode: diffusers always clamps to [-1, 1]; `decode(..., clamp=False)` runs the
  same frame-by-frame decoder loop without that last step.

Memory knobs are diffusers': `enable_tiling(...)` (spatial tiles, clamped decode only) and
`enable_slicing()` (one batch item at a time).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify
from torch import nn

from ..config import WanVAEConfig


class VideoVAE(nn.Module):
    """Wan2.2 VAE with Ovi's latent normalisation; `self.vae` holds the checkpoint weights.

    One compute dtype, `dtype` (the weights'): inputs are moved to it. The latent statistics
    stay float32 constants and are cast to the latent's dtype where they are applied.
    """

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        if len(config.latents_mean) != config.z_dim or len(config.latents_std) != config.z_dim:
            raise ValueError(f"latents_mean/latents_std must have z_dim={config.z_dim} entries")
        self.config = config
        # 1. the network: diffusers' Wan2.2 VAE (encoder, decoder, quant convs; the file's keys)
        self.vae = AutoencoderKLWan(
            base_dim=config.dim,
            decoder_base_dim=config.dec_dim,
            z_dim=config.z_dim,
            dim_mult=list(config.dim_mult),
            num_res_blocks=config.num_res_blocks,
            attn_scales=list(config.attn_scales),
            temperal_downsample=list(config.temporal_downsample),
            dropout=0.0,
            latents_mean=list(config.latents_mean),
            latents_std=list(config.latents_std),
            is_residual=True,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            patch_size=config.patch_size,
            scale_factor_temporal=config.temporal_compression,
            scale_factor_spatial=config.spatial_compression,
        )
        # 2. latent statistics: float32 constants of the config, never in the file
        self.register_buffer("latents_mean", torch.empty(config.z_dim), persistent=False)
        self.register_buffer("latents_std", torch.empty(config.z_dim), persistent=False)
        self.reset_latent_stats()

    def reset_latent_stats(self) -> None:
        """(Re)fill the float32 mean/std buffers from the config on the weights' device.

        Needed once after a meta-device build, whose buffers hold no values.
        """
        device = self._weight.device
        self.latents_mean = torch.tensor(
            self.config.latents_mean, dtype=torch.float32, device=device
        )
        self.latents_std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=device)

    @property
    def _weight(self) -> torch.Tensor:
        """A weight whose dtype and device inputs are moved to."""
        return self.vae.post_quant_conv.weight

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the weights')."""
        return self._weight.dtype

    @property
    def device(self) -> torch.device:
        return self._weight.device

    # --- memory knobs (diffusers') ---------------------------------------------------------

    def enable_tiling(self, **kwargs: int | float | None) -> None:
        """Spatial tiling (diffusers' `enable_tiling` arguments); the clamped decode only."""
        self.vae.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.vae.use_tiling = False

    def enable_slicing(self) -> None:
        """Encode/decode one batch item at a time."""
        self.vae.use_slicing = True

    def disable_slicing(self) -> None:
        self.vae.use_slicing = False

    # --- latent statistics -----------------------------------------------------------------

    # Ovi scales by the reciprocal 1/std (and divides by it to undo); doing the same keeps this
    # step bit-identical to the official wrapper rather than within one rounding of it.
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)  # broadcast over [B, C, F, H, W]
        mean = self.latents_mean.to(like.device, like.dtype).view(shape)
        inv_std = (1.0 / self.latents_std).to(like.device, like.dtype).view(shape)
        return mean, inv_std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Posterior mean -> DiT latent: (mu - mean) / std."""
        mean, inv_std = self._stats(mu)
        return (mu - mean) * inv_std

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """DiT latent -> decoder input: latent * std + mean."""
        mean, inv_std = self._stats(latent)
        return latent / inv_std + mean

    # --- encode ----------------------------------------------------------------------------

    def _check_pixels(self, video: torch.Tensor) -> None:
        step = self.config.spatial_compression
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, T, H, W], got {list(video.shape)}")
        if video.shape[-2] % step or video.shape[-1] % step:
            raise ValueError(f"video H and W must be multiples of {step}, got {list(video.shape)}")

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> latent [B, z, 1 + (T-1)//4, H/16, W/16].

        The posterior mean, normalised to (mu - mean) / std unless `normalize=False`.
        """
        self._check_pixels(video)
        # 1. the network's posterior mean, in the weight dtype
        mu = self.vae.encode(video.to(self._weight)).latent_dist.mean
        # 2. latent statistics
        return self.normalize(mu) if normalize else mu

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] or [B, 3, 1, H, W] in [-1, 1] -> latent [B, z, 1, H/16, W/16]."""
        if image.ndim == 4:
            image = image.unsqueeze(2)  # [B, 3, 1, H, W]
        if image.ndim != 5 or image.shape[2] != 1:
            raise ValueError(
                f"image must be [B, 3, H, W] or [B, 3, 1, H, W], got {list(image.shape)}"
            )
        return self.encode(image)

    # --- decode ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Normalised latent [B, z, F, h, w] -> video [B, 3, 1 + 4(F-1), 16h, 16w].

        `clamp=True` (Ovi's output) clips to [-1, 1]; `clamp=False` returns the decoder's raw
        values (no tiling on that path).
        """
        if latent.ndim != 5 or latent.shape[1] != self.config.z_dim:
            raise ValueError(
                f"latent must be [B, {self.config.z_dim}, F, h, w], got {list(latent.shape)}"
            )
        # 2. latent statistics (undone), then 1. the network's decoder
        z = self.denormalize(latent.to(self._weight))
        if clamp:
            return self.vae.decode(z).sample
        if self.vae.use_tiling:
            raise ValueError("an unclamped decode cannot be tiled; call disable_tiling() first")
        if self.vae.use_slicing and z.shape[0] > 1:
            return torch.cat([self._decode_unclamped(item) for item in z.split(1)])
        return self._decode_unclamped(z)

    def _decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        """diffusers' decode loop minus its final clamp: one latent frame at a time, with a
        causal-conv cache carried across frames; the temporal upsamplers skip frame 0."""
        decoder = self.vae.decoder
        cache: list[torch.Tensor | None] = [None] * sum(
            isinstance(m, WanCausalConv3d) for m in decoder.modules()
        )
        x = self.vae.post_quant_conv(z)
        frames = []
        for i in range(x.shape[2]):
            cursor = [0]  # index of the next causal conv into `cache`, advanced by the decoder
            frames.append(
                decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=cursor, first_chunk=i == 0)
            )
        out = torch.cat(frames, dim=2)  # [B, 12, T, h*8, w*8]
        return unpatchify(out, patch_size=self.config.patch_size)  # [B, 3, T, 16h, 16w]
