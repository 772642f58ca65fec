"""MMAudio 16 kHz mel VAE, the audio codec of Ovi (latent [B, 20, L] <-> log10 mel [B, 80, 2L]).

The network is diffusers' `MMAudioAutoencoder` (the body of `MMAudioVAE`): the same EDM2
magnitude-preserving blocks, mid attention and 2x temporal down/up-sample as MMAudio's `VAE_16k`.
It is held under the attribute `vae`, so its keys are `MMAudioVAE`'s `vae.*` keys. The waveform
front end of `MMAudioVAE` (`mel_converter`) is left out on purpose: it takes the natural log,
Ovi's 16 kHz front end takes log10, and Ovi never encodes audio while generating.

Shapes:
    latent z            [B, embed_dim, L]         (Ovi's audio latent, transposed to channels first)
    mel_normalized      [B, data_dim, 2L]         decoder output, standardised per mel bin
    mel                 [B, data_dim, 2L]         mel_normalized * data_std + data_mean, log10 mel

The convs apply their weight as stored, so the loader (`model/convert/mmaudio.py`) must hand in
the load-time-normalised weights, not the raw `v1-16.pth` values.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_mmaudio import MMAudioAutoencoder, MMAudioMPConv1d
from torch import nn

from ..config import AudioVAEConfig

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # posterior log-variance clamp


class AudioVAE(nn.Module):
    """Ovi's audio VAE: `decode(z) -> mel` for generation, `encode(mel)` for tests and tools."""

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        self.config = config
        # 1. encoder and decoder, 2. the mel statistics (`vae.data_mean` / `vae.data_std`,
        # buffers from the file): diffusers' MMAudio autoencoder, keys `vae.*`
        self.vae = MMAudioAutoencoder(
            mel_bins=config.data_dim,
            latent_channels=config.embed_dim,
            hidden_channels=config.hidden_dim,
            channel_multipliers=tuple(config.channel_multipliers),
            layers_per_block=config.layers_per_block,
        )

    def conv_weight_names(self) -> list[str]:
        """State-dict keys of every magnitude-preserving conv weight (the load-time transform)."""
        return [
            f"{name}.weight" for name, m in self.named_modules() if isinstance(m, MMAudioMPConv1d)
        ]

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """1. z [B, embed_dim, L] -> standardised mel [B, data_dim, 2L]."""
        return self.vae.decoder(z)

    def denormalize(self, mel_normalized: torch.Tensor) -> torch.Tensor:
        """2. Standardised mel -> log10 mel, the vocoder's input (same shape)."""
        return mel_normalized * self.vae.data_std + self.vae.data_mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, embed_dim, L] -> log10 mel [B, data_dim, 2L], ready for the vocoder."""
        return self.denormalize(self.decode_normalized(z))  # 1. decoder, 2. mel statistics

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log10 mel [B, data_dim, T] -> (mean, logvar) [B, embed_dim, T/2], logvar clamped."""
        moments = self.vae.encode(mel)  # [B, 2*embed_dim, T/2]; 2. standardise, 1. encoder
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
