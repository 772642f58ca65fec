"""The official `Wan2.2_VAE.pth` (inner `WanVAE_` module) -> diffusers `AutoencoderKLWan` keys.

The file is a flat fp32 state dict, 196 tensors at full size. diffusers' Wan2.2 VAE has the same
tensors under other names (the same facts as diffusers' `convert_vae_22`), so conversion is a
rename: every key matches exactly one anchored rule below, both ways. A key no rule matches is an
error naming it, and two keys landing on one name is an error too.

Rules are written as templates; `{name}` is a placeholder whose pattern is in `_PATTERNS`. The
index of the resampler after a stage's residual blocks is not in diffusers' names, so it is a
per-config constant (`{down}` = num_res_blocks in the encoder, `{up}` = num_res_blocks + 1 in
the decoder), which keeps the table one-to-one and reversible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch

from ..config import WanVAEConfig
from ..loading import CheckpointMismatchError, StateDict, expected_shapes, load_strict
from ..modules.video_vae import VideoVAE

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

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _compile(template: str, patterns: Mapping[str, str]) -> re.Pattern[str]:
    r"""Template `a.{s}.b` -> regex `a\.(?P<s>\d+)\.b` (used with fullmatch: anchored)."""
    parts = _PLACEHOLDER.split(template)  # literal, name, literal, name, ..., literal
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{patterns[part]})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


class KeyRules:
    """Anchored, one-to-one rename rules between the official and the diffusers key spaces."""

    def __init__(self, templates: Iterable[tuple[str, str]], constants: Mapping[str, int]) -> None:
        fixed = {name: str(value) for name, value in constants.items()}
        patterns = {**_PATTERNS, **{name: re.escape(value) for name, value in fixed.items()}}
        self._fixed = fixed
        self._rules: dict[bool, list[tuple[re.Pattern[str], str]]] = {False: [], True: []}
        for official, diffusers in templates:
            names_o = set(_PLACEHOLDER.findall(official)) - set(fixed)
            names_d = set(_PLACEHOLDER.findall(diffusers)) - set(fixed)
            if names_o != names_d:  # a captured part would be dropped: not one-to-one
                raise ValueError(f"rule {official!r} -> {diffusers!r} does not keep every part")
            self._rules[False].append((_compile(official, patterns), diffusers))
            self._rules[True].append((_compile(diffusers, patterns), official))

    def rename(self, key: str, *, reverse: bool = False) -> str | None:
        """The other name of `key` (official -> diffusers, or back), or None if no rule matches."""
        hits = [(m, t) for p, t in self._rules[reverse] if (m := p.fullmatch(key)) is not None]
        if len(hits) > 1:  # overlapping rules would make the result depend on their order
            raise ValueError(
                f"{key!r} matches {len(hits)} rename rules; the table must be disjoint"
            )
        if not hits:
            return None
        match, target = hits[0]
        return target.format_map({**self._fixed, **match.groupdict()})

    def convert(
        self, state: Mapping[str, torch.Tensor], source: str, *, reverse: bool = False
    ) -> StateDict:
        out: StateDict = {}
        unknown: list[str] = []
        for key, value in state.items():
            new_key = self.rename(key, reverse=reverse)
            if new_key is None:
                unknown.append(key)
            elif new_key in out:
                raise CheckpointMismatchError(source, [], [f"{key} (also maps to {new_key})"], [])
            else:
                out[new_key] = value
        if unknown:
            raise CheckpointMismatchError(source, [], sorted(unknown), [])
        return out


def wan_vae_rules(config: WanVAEConfig) -> KeyRules:
    return KeyRules(
        RULE_TEMPLATES, constants={"down": config.num_res_blocks, "up": config.num_res_blocks + 1}
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


def load_wan_vae(
    state: Mapping[str, torch.Tensor],
    config: WanVAEConfig,
    *,
    source: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> VideoVAE:
    """Official VAE state dict -> ready `VideoVAE` on `device` in `dtype`.

    Built on the meta device and assigned, so meta tensors with `device="meta"` check a
    full-size layout without allocating it.
    """
    converted = convert_wan_vae_state(state, config, source)
    with torch.device("meta"):
        model = VideoVAE(config)
    load_strict(model.vae, converted, source, dtype=dtype)
    model.reset_latent_stats()  # constants, not in the file: fill them where the weights are
    return model.to(device).eval().requires_grad_(False)


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


def random_wan_vae_state(config: WanVAEConfig, seed: int) -> StateDict:
    """Random float32 weights in the official file format (the random-weight `tiny` preset).

    Conv weights N(0, (0.8 / sqrt(fan_in))^2), biases N(0, 0.02^2), RMS-norm gammas
    1 + N(0, 0.1^2); the attention output projection is not zero.
    """
    gen = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for key, shape in wan_vae_shapes(config).items():
        if key.endswith(".gamma"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias"):
            value = 0.02 * torch.randn(shape, generator=gen)
        else:
            value = torch.randn(shape, generator=gen) * (0.8 / math.sqrt(math.prod(shape[1:])))
        state[key] = value
    return state
