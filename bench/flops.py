"""Analytical FLOP count of one `FusionModel` forward (2 FLOP per multiply-add).

Counted: every matrix product (linear layers, convolutions as GEMMs, attention QK^T and PV).
Not counted: norms, softmax, RoPE, modulation, activations, residual adds (elementwise work,
under 0.1% here). Per tower of width D, ffn width Ff, L tokens, the other tower's Lo tokens of
width Do, text_len T (all rows are attended), per block:

    self-attention   q, k, v, o          4 * 2 L D^2
                     QK^T, PV            2 * 2 L^2 D
    cross-attention  q, o                2 * 2 L D^2
                     text k, v           2 * 2 T D^2
                     text QK^T, PV       2 * 2 L T D
                     fusion k, v         2 * 2 Lo Do D
                     fusion QK^T, PV     2 * 2 L Lo D
    FFN              two linears         2 * 2 L D Ff

plus, once per forward: patch embedding (video Conv3d 1x2x2 as a GEMM; audio Conv1d k7 and the
gated ConvMLP, k7), text embedding (2 linears on T rows), time MLPs (on U rows: 1 per distinct
timestep, or L with the official per-token form) and the head.

At 704x704x121 (Lv = 31 * 22 * 22 = 15004, La = 157), full Ovi: 239.83 TFLOP with per-token
time MLPs (the official code; the figure the issue quotes as 239.8) and 237.80 TFLOP with one
time-MLP row per distinct timestep (ours). The negative CFG pass skips one layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.config import FusionConfig, TowerConfig
from model.modules.fusion import AUDIO_EMBED_KERNEL, audio_mlp_hidden


@dataclass(frozen=True)
class Shape:
    """A clip size: pixels and frames -> token counts (Wan2.2 VAE 16x16x4, patch 1x2x2)."""

    height: int
    width: int
    frames: int
    audio_tokens: int

    @property
    def label(self) -> str:
        return f"{self.height}x{self.width}x{self.frames}"

    @property
    def latent_frames(self) -> int:
        return 1 + (self.frames - 1) // 4

    def video_tokens(self, config: TowerConfig) -> int:
        pt, ph, pw = config.patch_size
        return (self.latent_frames // pt) * (self.height // 16 // ph) * (self.width // 16 // pw)


def _block(t: TowerConfig, n: int, other: TowerConfig, n_other: int) -> dict[str, float]:
    d, f, text = t.dim, t.ffn_dim, t.text_len
    return {
        "self_attn_proj": 4 * 2 * n * d * d,
        "self_attn_sdpa": 2 * 2 * n * n * d,
        "cross_attn_proj": 2 * 2 * n * d * d + 2 * 2 * text * d * d,
        "cross_attn_sdpa": 2 * 2 * n * text * d,
        "fusion_proj": 2 * 2 * n_other * other.dim * d,
        "fusion_sdpa": 2 * 2 * n * n_other * d,
        "ffn": 2 * 2 * n * d * f,
    }


def _once(t: TowerConfig, n: int, per_token_time: bool, time_rows: int) -> dict[str, float]:
    d = t.dim
    if t.modality == "video":
        embed = 2 * n * t.in_dim * math.prod(t.patch_size) * d
    else:
        k, hidden = AUDIO_EMBED_KERNEL, audio_mlp_hidden(d)
        embed = 2 * n * t.in_dim * k * d + 3 * 2 * n * d * hidden * k
    rows = n if per_token_time else time_rows
    return {
        "patch_embed": embed,
        "text_embed": 2 * t.text_len * (t.text_dim * d + d * d),
        "time_mlp": 2 * rows * (t.freq_dim * d + d * d + d * 6 * d),
        "head": 2 * n * d * t.out_dim * math.prod(t.patch_size),
    }


def forward_flops(
    config: FusionConfig,
    video_tokens: int,
    audio_tokens: int,
    *,
    batch: int = 1,
    skipped_layers: int = 0,
    per_token_time: bool = False,
    time_rows: int = 1,
) -> dict[str, float]:
    """FLOP of one forward, by part, with "total". `skipped_layers`: SLG (the negative pass)."""
    v, a = config.video, config.audio
    layers = v.num_layers - skipped_layers
    parts: dict[str, float] = {}
    for tower, n, other, n_other in (
        (v, video_tokens, a, audio_tokens),
        (a, audio_tokens, v, video_tokens),
    ):
        for name, value in _block(tower, n, other, n_other).items():
            parts[f"{tower.modality}.{name}"] = batch * layers * value
        for name, value in _once(tower, n, per_token_time, time_rows).items():
            parts[f"{tower.modality}.{name}"] = batch * value
    parts["total"] = sum(parts.values())
    return parts


def step_flops(
    config: FusionConfig, shape: Shape, *, per_token_time: bool = False, slg: bool = True
) -> float:
    """One denoising step: the positive pass and the negative pass (one layer skipped)."""
    nv, na = shape.video_tokens(config.video), shape.audio_tokens
    kw = dict(per_token_time=per_token_time)
    pos = forward_flops(config, nv, na, **kw)["total"]
    neg = forward_flops(config, nv, na, skipped_layers=int(slg), **kw)["total"]
    return pos + neg
