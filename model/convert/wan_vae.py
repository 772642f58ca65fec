"""The official `Wan2.2_VAE.pth` (inner `WanVAE_` module) -> diffusers `AutoencoderKLWan` keys.

The file is a flat fp32 state dict, 196 tensors at full size. diffusers' Wan2.2 VAE has the same
tensors under other names (the same facts as diffusers' `convert_vae_22`), so conversion is a
rename: every key matches exactly one anchored rule below, both ways (`convert/rules.py`). A key
no rule matches is an error naming it, and two keys landing on one name is an error too.

Rules are written as templates; `{name}` is a placeholder whose pattern is in `_PATTERNS`. The
index of the resampler after a stage's residual blocks is not in diffusers' names, so it is a
per-config constant (`{down}` = num_res_blocks in the encoder, `{up}` = num_res_blocks + 1 in
the decoder), which keeps the table one-to-one and reversible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..config import WanVAEConfig
from ..loading import CheckpointFamily, CheckpointMismatchError, StateDict, expected_shapes
from ..modules.video_vae import VideoVAE
from .rules import KeyRules

_PATTERNS: dict[str, str] = {
    "e": r"encoder|decoder",
    "s": r"\d+",  # stage
    "j": r"\d+",  # residual block within a stage
    "w": r"weight|bias",
    "op": r"resample\.1|time_conv",  # spatial (2-D) and temporal resample convs
    "qp": r"to_qkv|proj",
}

# Residual block: official container + part -> diffusers container + part.
_RESNETS: tuple[tuple[str, str], ...] = (
    ("encoder.downsamples.{s}.downsamples.{j}", "encoder.down_blocks.{s}.resnets.{j}"),
    ("decoder.upsamples.{s}.upsamples.{j}", "decoder.up_blocks.{s}.resnets.{j}"),
    ("{e}.middle.0", "{e}.mid_block.resnets.0"),
    ("{e}.middle.2", "{e}.mid_block.resnets.1"),
)
_RESNET_PARTS: tuple[tuple[str, str], ...] = (
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.{w}", "conv1.{w}"),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.{w}", "conv2.{w}"),
    ("shortcut.{w}", "conv_shortcut.{w}"),
)
_OTHER: tuple[tuple[str, str], ...] = (
    ("{e}.conv1.{w}", "{e}.conv_in.{w}"),
    (
        "encoder.downsamples.{s}.downsamples.{down}.{op}.{w}",
        "encoder.down_blocks.{s}.downsampler.{op}.{w}",
    ),
    ("decoder.upsamples.{s}.upsamples.{up}.{op}.{w}", "decoder.up_blocks.{s}.upsampler.{op}.{w}"),
    ("{e}.middle.1.norm.gamma", "{e}.mid_block.attentions.0.norm.gamma"),
    ("{e}.middle.1.{qp}.{w}", "{e}.mid_block.attentions.0.{qp}.{w}"),
    ("{e}.head.0.gamma", "{e}.norm_out.gamma"),
    ("{e}.head.2.{w}", "{e}.conv_out.{w}"),
    ("conv1.{w}", "quant_conv.{w}"),  # mean/logvar projection after the encoder
    ("conv2.{w}", "post_quant_conv.{w}"),
)
RULE_TEMPLATES: tuple[tuple[str, str], ...] = (
    tuple((f"{a}.{pa}", f"{b}.{pb}") for a, b in _RESNETS for pa, pb in _RESNET_PARTS) + _OTHER
)


def wan_vae_rules(config: WanVAEConfig) -> KeyRules:
    return KeyRules(
        RULE_TEMPLATES,
        _PATTERNS,
        constants={"down": config.num_res_blocks, "up": config.num_res_blocks + 1},
    )


def convert_wan_vae_state(
    state: Mapping[str, torch.Tensor], config: WanVAEConfig, source: str
) -> StateDict:
    """Official `Wan2.2_VAE.pth` dict -> `AutoencoderKLWan` dict (rename only)."""
    return wan_vae_rules(config).convert(state, source)


def to_official_wan_vae_state(
    state: Mapping[str, torch.Tensor], config: WanVAEConfig, source: str
) -> StateDict:
    """`AutoencoderKLWan` dict -> official `Wan2.2_VAE.pth` names (the inverse rename)."""
    return wan_vae_rules(config).convert(state, source, reverse=True)


def wan_vae_shapes(config: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of an official VAE file for `config`."""
    with torch.device("meta"):
        model = VideoVAE(config)
    rules = wan_vae_rules(config)
    shapes = {}
    for key, shape in expected_shapes(model.vae).items():
        official = rules.rename(key, reverse=True)
        if official is None:  # diffusers grew a tensor this table does not know
            raise CheckpointMismatchError("AutoencoderKLWan", [], [key], [])
        shapes[official] = shape
    return shapes


def _init(key: str, shape: tuple[int, ...], noise: torch.Tensor) -> torch.Tensor:
    """Conv weights N(0, (0.8 / sqrt(fan_in))^2), biases N(0, 0.02^2), RMS-norm gammas
    1 + N(0, 0.1^2); the attention output projection is not zero."""
    if key.endswith(".gamma"):
        return 1.0 + 0.1 * noise
    if key.endswith(".bias"):
        return 0.02 * noise
    return noise * (0.8 / math.sqrt(math.prod(shape[1:])))


WAN_VAE = CheckpointFamily(
    name="Wan2.2 VAE",
    build=VideoVAE,
    convert=lambda state, vae, source, _device: convert_wan_vae_state(state, vae.config, source),
    target=lambda vae: vae.vae,  # the keys are the diffusers network's
    finish=VideoVAE.reset_latent_stats,  # constants, not in the file: filled where the weights are
    layout=wan_vae_shapes,
    init=_init,
)
# (state, WanVAEConfig, *, source, dtype=fp32, device="cpu") -> VideoVAE
load_wan_vae = WAN_VAE.load
# (config, seed=0, dtype=fp32, device=None) -> official-format random weights (`_init`)
random_wan_vae_state = WAN_VAE.random_state
