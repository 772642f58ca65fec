"""BigVGAN v1 16 kHz vocoder: log10 mel [B, 80, T] -> waveform [B, 1, T * hop] in (-1, 1).

The generator body (conv_pre, transposed-conv upsamplers, anti-aliased AMP blocks with snake-beta,
activation_post) is diffusers' `MMAudioVocoder`, which is the BigVGAN-v2 variant of the same
network. BigVGAN v1 differs only at the very end, and that is all this module changes:

    v2 (diffusers): conv_post without bias, then clamp to [-1, 1]
    v1 (Ovi):       conv_post WITH bias,    then tanh

Weights arrive with weight norm already folded into plain `.weight` tensors and with the
persistent Kaiser-sinc `filter` buffers as stored in the checkpoint (`model/convert/mmaudio.py`).
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.mmaudio_vocoder import MMAudioVocoder
from torch import nn

from ..config import VocoderConfig

POST_KERNEL_SIZE = 7


class Vocoder(MMAudioVocoder):
    """BigVGAN v1 generator; keys match `best_netG.pt['generator']` after weight-norm folding."""

    def __init__(self, config: VocoderConfig) -> None:
        if not config.snake_logscale:
            raise ValueError("only snake_logscale=True (log-scale alpha/beta) is supported")
        # 1. conv_pre, 2. the upsampling stages (transposed conv + AMP blocks with snake-beta),
        # 3. activation_post + conv_post: diffusers' MMAudioVocoder body
        super().__init__(
            num_mels=config.num_mels,
            upsample_initial_channel=config.upsample_initial_channel,
            upsample_rates=tuple(config.upsample_rates),
            upsample_kernel_sizes=tuple(config.upsample_kernel_sizes),
            resblock_kernel_sizes=tuple(config.resblock_kernel_sizes),
            resblock_dilation_sizes=tuple(tuple(d) for d in config.resblock_dilation_sizes),
        )
        self.hop_length = config.hop_length
        # 3. the one architectural difference from v2: conv_post has a bias (and tanh follows)
        channels = self.conv_post.in_channels
        self.conv_post = nn.Conv1d(
            channels, 1, POST_KERNEL_SIZE, padding=POST_KERNEL_SIZE // 2, bias=True
        )

    def forward_pre_tanh(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, num_mels, T] -> conv_post output [B, 1, T * hop] (before tanh)."""
        # 1. conv_pre
        x = self.conv_pre(mel)  # [B, C0, T]
        # 2. upsampling stages: each upsampler, then the mean of its AMP blocks
        for stage, up in enumerate(self.ups):
            x = up[0](x)  # [B, C0 / 2^(stage+1), T * prod(rates[:stage+1])]
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        # 3. activation_post, conv_post (with bias)
        return self.conv_post(self.activation_post(x))  # [B, 1, T * hop]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """mel [B, num_mels, T] (log10 mel) -> waveform [B, 1, T * hop] in (-1, 1): tanh of
        `forward_pre_tanh` (v1's output layer; v2 clamps instead)."""
        return torch.tanh(self.forward_pre_tanh(mel))
