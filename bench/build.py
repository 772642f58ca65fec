"""Random-weight components of a variant, built where they run.

The two big networks (fusion DiT, 11.7 B parameters; umT5-XXL encoder, 5.7 B) are built on the
meta device, materialised directly on the target device in the target dtype, and filled there
one tensor at a time with the same distributions as the CPU helpers (`random_fusion_state`,
`random_t5_state`), so host RAM and host RNG speed never bound the setup. The small ones (the
Wan VAE, MMAudio VAE, BigVGAN) go through their CPU random-state helpers and real loaders.
Same shapes as the released files; the values only have to keep activations finite.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import UMT5EncoderModel

from model.config import FusionConfig, OviConfig, T5Config
from model.convert.mmaudio import (
    load_audio_vae,
    load_vocoder,
    random_audio_vae_state,
    random_vocoder_state,
)
from model.convert.umt5 import umt5_config
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
    """`FusionModel` with `random_fusion_state`'s distributions, drawn on `device`: matrices
    N(0, 1/fan_in), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2), norm biases
    N(0, 0.05^2), modulation tables N(0, 0.3^2)."""
    with torch.device("meta"):
        model = FusionModel(config)
    _materialise(model, device, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    for key, param in model.named_parameters():
        module, leaf = key.rsplit(".", 2)[-2:]
        param.normal_(generator=gen)
        if leaf == "modulation":
            param.mul_(0.3)
        elif "norm" in module and leaf == "weight":
            param.mul_(0.1).add_(1.0)
        elif "norm" in module:
            param.mul_(0.05)
        elif leaf == "bias":
            param.mul_(0.05)
        else:
            param.div_(param[0].numel() ** 0.5)
    return model


@torch.no_grad()
def random_t5(
    config: T5Config, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> UMT5EncoderModel:
    """transformers `UMT5EncoderModel` with `random_t5_state`'s distributions, on `device`:
    linear N(0, 1/fan_in), embedding N(0, 1), norms 1 + N(0, 0.1^2), position biases
    N(0, 0.5^2)."""
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(config))
    _materialise(model, device, dtype)
    model.encoder.set_input_embeddings(model.shared)  # the file's one token embedding
    gen = torch.Generator(device=device).manual_seed(seed)
    for key, param in model.named_parameters():
        param.normal_(generator=gen)
        if key.endswith("layer_norm.weight"):
            param.mul_(0.1).add_(1.0)
        elif key.endswith("relative_attention_bias.weight"):
            param.mul_(0.5)
        elif key != "shared.weight":
            param.div_(param.shape[1] ** 0.5)
    return model


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
    model = random_t5(config.t5, device, dtype, seed)
    return TextEncoder(model, tokenizer_dir=tokenizer_dir, text_len=config.t5.text_len)


def build_video_vaes(
    config: OviConfig, device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[VideoVAE, VideoVAE]:
    """(VAE in `dtype`, the same weights in float32)."""
    state = random_wan_vae_state(config.video_vae, seed)
    fp32 = load_wan_vae(state, config.video_vae, source="random", dtype=torch.float32)
    low = load_wan_vae(state, config.video_vae, source="random", dtype=dtype, device=device)
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
