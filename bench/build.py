"""Random-weight components of a variant, built where they run.

Every component gets the library's random initialisation (`random_*_state` in `model/convert/`)
and goes through its real loader. The two big networks (fusion DiT, 11.7 B parameters; umT5-XXL
encoder, 5.7 B) draw their weights directly on the target device in the target dtype, one tensor
at a time (the `device=` of `random_fusion_state` / `random_t5_state`), so host RAM and host RNG
speed never bound the setup; the small ones (the Wan VAE, MMAudio VAE, BigVGAN) are drawn on the
CPU. Same shapes as the released files; the values only have to keep activations finite.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.config import FusionConfig, OviConfig
from model.convert.fusion import load_fusion, random_fusion_state
from model.convert.mmaudio import (
    load_audio_vae,
    load_vocoder,
    random_audio_vae_state,
    random_vocoder_state,
)
from model.convert.umt5 import load_t5, random_t5_state
from model.convert.wan_vae import load_wan_vae, random_wan_vae_state
from model.modules.audio_vae import AudioVAE
from model.modules.fusion import FusionModel
from model.modules.text_encoder import TextEncoder, build_tiny_tokenizer
from model.modules.video_vae import VideoVAE
from model.modules.vocoder import Vocoder


def _materialise(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A meta-built module -> uninitialised storage on `device` in `dtype` (no host copy)."""
    if any(p.dtype != dtype for p in module.parameters()):  # diffusers warns on a no-op cast
        module = module.to(dtype)
    return module.to_empty(device=device).requires_grad_(False).eval()


@torch.no_grad()
def random_fusion(
    config: FusionConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> FusionModel:
    """`FusionModel` with the library's random weights, drawn on `device` in `dtype`."""
    state = random_fusion_state(config, seed, dtype=dtype, device=device)
    return load_fusion(state, config, source="random", dtype=dtype, device=device)


@dataclass
class Components:
    text_encoder: TextEncoder | None = None
    fusion: FusionModel | None = None
    video_vae: VideoVAE | None = None  # compute dtype (bf16 on GPU)
    video_vae_fp32: VideoVAE | None = None  # float32 reference for the pixel error
    audio_vae: AudioVAE | None = None
    vocoder: Vocoder | None = None


def build_text_encoder(
    config: OviConfig, device: torch.device, dtype: torch.dtype, seed: int
) -> TextEncoder:
    """umT5 with a tiny offline tokenizer: ids stay small, but every prompt is padded to
    text_len (512) tokens, so the encoder does the real amount of work."""
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="ovi-bench-tokenizer-"))
    build_tiny_tokenizer(tokenizer_dir, min(config.t5.vocab, 64))
    state = random_t5_state(config.t5, seed, dtype=dtype, device=device)  # drawn on the device
    model = load_t5(state, config.t5, source="random", dtype=dtype, device=device)
    return TextEncoder(model, tokenizer_dir=tokenizer_dir, text_len=config.t5.text_len)


def build_video_vaes(
    config: OviConfig, device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[VideoVAE, VideoVAE]:
    """(VAE in `dtype`: the `fast_vae` mode, the same weights computed in float32: the default,
    the official precision: float32 math on the `dtype`-rounded weights)."""
    state = random_wan_vae_state(config.video_vae, seed)
    low = load_wan_vae(state, config.video_vae, source="random", dtype=dtype, device=device)
    rounded = {k: v.to(dtype).float() for k, v in state.items()}
    fp32 = load_wan_vae(rounded, config.video_vae, source="random", dtype=torch.float32)
    return low, fp32.to(device)


def build_audio(config: OviConfig, device: torch.device, seed: int) -> tuple[AudioVAE, Vocoder]:
    """Audio VAE + vocoder in float32, as the pipeline runs them."""
    audio_vae = load_audio_vae(
        random_audio_vae_state(config.audio_vae, seed), config.audio_vae, source="random"
    ).to(device)
    vocoder = load_vocoder(
        random_vocoder_state(config.vocoder, seed + 1), config.vocoder, source="random"
    ).to(device)
    return audio_vae, vocoder
