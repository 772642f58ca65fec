"""Ovi's twin-tower fusion DiT: a Wan2.2 video tower and a Wan audio tower, fused per block.

Written from the documented behaviour of the official model (`shared/reference/README.md`,
"fusion/"), in the order of Wan2.2's `wan/modules/model.py`: helpers (timestep features, RoPE),
norms and the other fp32 islands, self-attention, cross-attention with fusion, block, head,
tower, and last the public `FusionModel`. Module names equal the official checkpoint keys
(`video_model.blocks.N.self_attn.q`, `...cross_attn.k_fusion`, `head.modulation`, ...), so the
released files load strictly as they are.

Shape legend
    B          batch
    C, F, H, W video latent channels (48), latent frames, rows, columns
    Lv         video tokens = F * (H/2) * (W/2), ordered (frame, row, column)
    La, Ca     audio latent steps (one token each) and channels (20)
    Lt, Dt     text rows (zero-padded to text_len) and text width
    D, N, d    tower width, heads, head_dim = D / N
    U          distinct timesteps per sample: 1, or 2 with a clean first frame (0 and t)

    video latents [B, C, F, H, W]   tokens [B, Lv, D]   audio latents [B, La, Ca]   text [B, Lt, Dt]

Precision: one compute dtype per model, `FusionModel.dtype` (the weight dtype: bf16 on GPU,
fp32 on CPU), read once per forward and handed to every block and head in `TowerInputs.dtype`;
linears, convs and attention run in it. The fp32 islands (as Wan keeps them) are listed in
`FusionModel.fp32_modules`: their modules compute in float32 whatever their weight dtype
(`LayerNorm`, `RMSNorm`, `Fp32Sequential`, `Modulation` and the head's modulation table):
    - `LayerNorm` (norm1/norm2/norm3, the head norm, pre_attn_norm_fusion) and `RMSNorm`
      (norm_q/norm_k/norm_k_fusion);
    - modulation tables (block `modulation.modulation` + e0, head modulation + e), the
      shift/scale they apply and the gates;
    - timestep features (float64 sinusoid) and the time MLPs (time_embedding, time_projection).
Besides these modules, the residual streams x (video and audio) and every residual add stay
fp32, and RoPE angles are float64 with the rotation in float32.

The model has no buffers. RoPE angles and timestep features are computed in each forward from
the latent grid and the timesteps (once per forward, shared by all blocks; cheap next to one
block), so a model built on the meta device and loaded with `assign=True` is complete. Within
one clip (`FusionModel.clip()` with a `ClipCache` set) the RoPE tables, the embedded texts and
every layer's text keys/values are computed once and reused by every step (bit-identical).

Fast path (`model/optimize/` applies it to a loaded model; every switch keeps the outputs equal
to float rounding): `fuse_projections()` on the attentions (one GEMM for self-attention q/k/v,
one for the text k/v, one for the fusion k/v; the state dict keeps the official keys),
`FusionModel.layer_fn` (the per-layer function, replaced by a compiled one), `FusionModel.offload`
(block-level weight streaming), `FusionModel.forward_cfg` (both CFG passes in one batch) and
`FusionModel.share_first_layer` (the guidance passes' text-free work, i.e. embeddings and layer 0's
self-attentions, computed once per step: bit-identical).
`FusionModel.time_per_token` switches the time MLPs to the official per-token form (same values,
more work; the benchmark's reference-style path).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FusionConfig, TowerConfig
from .attention import attention

Tensor = torch.Tensor
Rope = tuple[Tensor, Tensor]  # (cos, sin), each [L, d/2] float32
Context = tuple[Tensor, Tensor]  # text embeddings (video [B, Ltv, Dt], audio [B, Lta, Dt])

ROPE_THETA = 10000.0
FUSION_NORM_EPS = 1e-6  # pre_attn_norm_fusion / norm_k_fusion use this, not the config eps
AUDIO_EMBED_KERNEL = 7  # audio patch embedding: Conv1d + gated ConvMLP, kernel 7, pad 3


# ---------------------------------------------------------------------------------------------
# 1. Helpers: timestep features and RoPE
# ---------------------------------------------------------------------------------------------


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Timestep features, float64: t [...] -> [..., dim] = [cos(t w_k), sin(t w_k)], w_k = 10000^(-k/half)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (frame, row, column): d/2 - 2*(d//6), d//6, d//6 (22/21/21 at d=128)."""
    third = head_dim // 6
    return head_dim // 2 - 2 * third, third, third


def rope_inv_freqs(pairs: int, device: torch.device | None = None) -> torch.Tensor:
    """10000^(-2k / (2*pairs)) for k < pairs, float64 [pairs]."""
    exps = torch.arange(0, 2 * pairs, 2, dtype=torch.float64, device=device) / (2 * pairs)
    return 1.0 / torch.pow(ROPE_THETA, exps)


def rope_axis_angles(
    n: int, pairs: int, scale: float = 1.0, device: torch.device | None = None
) -> torch.Tensor:
    """Angles of positions 0..n-1 on one axis, float64 [n, pairs]: position * scale * freq_k."""
    positions = torch.arange(n, dtype=torch.float64, device=device)
    return torch.outer(positions, scale * rope_inv_freqs(pairs, device))  # [n, pairs]


def rope_angles(
    grid: tuple[int, ...], head_dim: int, scale: float = 1.0, device: torch.device | None = None
) -> torch.Tensor:
    """Rotation angle of every (token, pair), float64 [L, d/2].

    Video, grid (F, H', W'): pairs split (frame, row, column) per `rope_split`, each with its own
    frequencies, tokens in (f, h, w) order. Audio, grid (L,): only the frame-part pairs rotate,
    by token index with frequencies scaled by `scale`; the other pairs get angle 0 (unrotated).
    """
    pf, ph, pw = rope_split(head_dim)
    if len(grid) == 3:
        f, h, w = grid
        af = rope_axis_angles(f, pf, 1.0, device)[:, None, None].expand(f, h, w, pf)
        ah = rope_axis_angles(h, ph, 1.0, device)[None, :, None].expand(f, h, w, ph)
        aw = rope_axis_angles(w, pw, 1.0, device)[None, None, :].expand(f, h, w, pw)
        return torch.cat([af, ah, aw], dim=-1).reshape(f * h * w, head_dim // 2)
    if len(grid) == 1:
        rotated = rope_axis_angles(grid[0], pf, scale, device)  # [L, pf]
        return F.pad(rotated, (0, head_dim // 2 - pf))
    raise ValueError(f"RoPE grid must be (F, H, W) or (L,), got {grid}")


def rope_tables(
    grid: tuple[int, ...], head_dim: int, scale: float = 1.0, device: torch.device | None = None
) -> Rope:
    """(cos, sin) of `rope_angles`, each float32 [L, d/2]."""
    angles = rope_angles(grid, head_dim, scale, device)  # [L, d/2] float64
    return torch.cos(angles).float(), torch.sin(angles).float()


def rope_apply(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) as complex numbers. x: [B, L, N, d] -> same shape/dtype."""
    cos, sin = (r[None, :, None, :] for r in rope)  # [1, L, 1, d/2]
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # [B, L, N, d/2] each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # [B, L, N, d/2, 2]
    return out.flatten(-2).to(x.dtype)


def _per_token(m: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Rows per distinct timestep [B, U, ...] -> per token [B, L, ...] (U == 1: broadcast view)."""
    return m if index is None else m[:, index]


# ---------------------------------------------------------------------------------------------
# 2. fp32 islands: norms, time MLPs, modulation tables
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, over the last dim; computed in fp32, returns x.dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returning fp32 (callers cast to the compute dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class Fp32Sequential(nn.Sequential):
    """A Linear/activation Sequential computed in float32 whatever its weight dtype (the time
    MLPs); same keys as `nn.Sequential`. [..., in] -> [..., out] fp32.

    cache: an active `ClipCache` with `fp32_weights` set keeps the float32 copies of weights
    stored in another dtype for the clip (cast once, not every call; fp32 weights are used as
    they are, no copy)."""

    def forward(self, x: torch.Tensor, cache: ClipCache | None = None) -> torch.Tensor:
        x = x.float()
        keep = cache if cache is not None and cache.fp32_weights else None
        for layer in self:
            if isinstance(layer, nn.Linear):
                w, b = layer.weight, layer.bias
                if keep is not None and w.dtype != torch.float32:
                    w, b = _cached(
                        keep, ("fp32", "weight"), w, lambda w=w, b=b: (w.float(), b.float())
                    )
                x = F.linear(x, w.float(), b.float())
            else:
                x = layer(x)
        return x


class Modulation(nn.Module):
    """A block's adaLN table, `modulation.modulation` [1, 6, D] (the official key), added to the
    time projection in fp32."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, n, dim) / dim**0.5)

    def forward(self, e0: torch.Tensor) -> list[torch.Tensor]:
        """e0: [B, U, n, D] fp32 -> n chunks [B, U, D] fp32 (shift, scale, gate, ...)."""
        return list((self.modulation.float() + e0).unbind(2))


FP32_MODULE_TYPES = (RMSNorm, LayerNorm, Fp32Sequential, Modulation)


# ---------------------------------------------------------------------------------------------
# 3. Attention
# ---------------------------------------------------------------------------------------------


class FusableProjections(nn.Module):
    """Linear projections that read the same input, optionally fused into one GEMM.

    `FUSIONS` maps a fused name to the official projections it stacks along the output rows,
    e.g. {"qkv": ("q", "k", "v")}. `fuse_projections()` replaces those modules by one
    `nn.Linear` (their weights concatenated; no copy is kept); `unfuse_projections()` splits it
    back. Either way `state_dict()` has the official keys and `load_state_dict()` takes them
    (strict), so checkpoint files load into a fused model as they are.
    """

    FUSIONS: dict[str, tuple[str, ...]] = {}

    def __init__(self) -> None:
        super().__init__()
        for name in self.FUSIONS:
            setattr(self, name, None)  # the fused nn.Linear while fused
        self.register_state_dict_post_hook(_split_fused_state)
        self.register_load_state_dict_pre_hook(_join_fused_state)

    @property
    def fused(self) -> bool:
        return any(getattr(self, name) is not None for name in self.FUSIONS)

    def fuse_projections(self) -> None:
        for name, parts in self.FUSIONS.items():
            if getattr(self, name) is not None:
                continue
            linears: list[nn.Linear] = [getattr(self, p) for p in parts]
            weight = torch.cat([lin.weight.detach() for lin in linears])  # [sum(out), in]
            bias = torch.cat([lin.bias.detach() for lin in linears])
            for p in parts:
                delattr(self, p)  # frees the separate weights as soon as nothing else holds them
            setattr(self, name, _linear_from(weight, bias))

    def unfuse_projections(self) -> None:
        for name, parts in self.FUSIONS.items():
            fused: nn.Linear | None = getattr(self, name)
            if fused is None:
                continue
            weights = fused.weight.detach().chunk(len(parts))
            biases = fused.bias.detach().chunk(len(parts))
            setattr(self, name, None)
            for p, w, b in zip(parts, weights, biases, strict=True):
                setattr(self, p, _linear_from(w.clone(), b.clone()))

    def project(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The projections `FUSIONS[name]` of x, as separate [.., out] tensors (views if fused)."""
        fused = getattr(self, name)
        if fused is None:
            return tuple(getattr(self, p)(x) for p in self.FUSIONS[name])
        return fused(x).chunk(len(self.FUSIONS[name]), dim=-1)


def _linear_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An nn.Linear holding exactly these tensors (no allocation, no init)."""
    with torch.device("meta"):
        linear = nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def _split_fused_state(
    module: FusableProjections, state: dict[str, Any], prefix: str, _meta: Any
) -> None:
    """state_dict() post-hook: fused rows -> the official per-projection keys."""
    for name, parts in module.FUSIONS.items():
        for leaf in ("weight", "bias"):
            key = f"{prefix}{name}.{leaf}"
            if key in state:
                for p, chunk in zip(parts, state.pop(key).chunk(len(parts)), strict=True):
                    state[f"{prefix}{p}.{leaf}"] = chunk


def _join_fused_state(
    module: FusableProjections, state: dict[str, Any], prefix: str, *_args: Any
) -> None:
    """load_state_dict() pre-hook: official per-projection keys -> fused rows (when fused)."""
    for name, parts in module.FUSIONS.items():
        if getattr(module, name) is None:
            continue
        for leaf in ("weight", "bias"):
            keys = [f"{prefix}{p}.{leaf}" for p in parts]
            if all(k in state for k in keys):
                state[f"{prefix}{name}.{leaf}"] = torch.cat([state.pop(k) for k in keys])


class SelfAttention(FusableProjections):
    """Multi-head self-attention with q/k RMS norms (over the full width) and RoPE."""

    FUSIONS = {"qkv": ("q", "k", "v")}
    # The attention over the (possibly distributed) token sequence: None is the local
    # `attention`; `model/parallel` sets a Ulysses all-to-all (self-attention) or a gather of
    # the shorter stream (fusion attention) for one forward. Same signature as `attention`.
    attend: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        # 1. projections: q, k, v in, o out
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        # 2. q/k norms: over the full width, before the heads are split (fp32 islands)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, L, D] -> [B, L, N, d]

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        """x: [B, L, D] (compute dtype), rope: (cos, sin) [L, d/2] -> [B, L, D]."""
        # 1. projections in
        q, k, v = self.project("qkv", x)  # [B, L, D] each
        # 2. q/k norms, heads, RoPE
        q = rope_apply(self._heads(self.norm_q(q)), rope)  # [B, L, N, d]
        k = rope_apply(self._heads(self.norm_k(k)), rope)
        # attention, then 1.'s projection out
        return self.o((self.attend or attention)(q, k, self._heads(v)).flatten(2))


class FusionCrossAttention(SelfAttention):
    """Text cross-attention plus attention to the other tower's stream (the fusion keys).

    q = norm_q(q(x)) attends (1) to the text, unrotated, with all text_len keys, and (2) rotated
    with the source positions, to k2 = norm_k_fusion(k_fusion(y')), v2 = v_fusion(y'), where
    y' = pre_attn_norm_fusion(y) is the other tower's residual stream and k2 is rotated with the
    other tower's positions. Output: o(x1 + x2).
    """

    FUSIONS = {"kv": ("k", "v"), "kv_fusion": ("k_fusion", "v_fusion")}  # q reads x, not these

    def __init__(
        self, dim: int, num_heads: int, qk_norm: bool, eps: float, target_dim: int
    ) -> None:
        # 1. text attention: q (reads x), k and v (read the text), their norms, o (SelfAttention)
        super().__init__(dim, num_heads, qk_norm, eps)
        # 2. fusion attention: keys and values from the other tower's normed stream
        self.k_fusion = nn.Linear(target_dim, dim)
        self.v_fusion = nn.Linear(target_dim, dim)
        self.pre_attn_norm_fusion = LayerNorm(target_dim, eps=FUSION_NORM_EPS)
        # like norm_q/norm_k, present only with qk_norm (the official injection does the same)
        self.norm_k_fusion = RMSNorm(dim, FUSION_NORM_EPS) if qk_norm else nn.Identity()

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1.'s keys and values of the embedded text [B, Lt, D] -> ([B, Lt, N, d], [B, Lt, N, d]):
        fixed for a clip, so `ClipCache` may keep them across steps."""
        k, v = self.project("kv", context)  # [B, Lt, D] each
        return self._heads(self.norm_k(k)), self._heads(v)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        target: torch.Tensor,
        rope: Rope,
        target_rope: Rope,
        text_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: [B, L, D] (compute dtype); context: [B, Lt, D] embedded text; target: [B, Lo, Do]
        fp32 stream of the other tower; rope [L, d/2], target_rope [Lo, d/2]; text_kv:
        `self.text_kv(context)` when already computed (a clip cache) -> [B, L, D]."""
        # 1. text attention: no RoPE, no mask (zero-padded rows are attended too)
        q = self._heads(self.norm_q(self.q(x)))  # [B, L, N, d]
        k, v = self.text_kv(context) if text_kv is None else text_kv  # [B, Lt, N, d] each
        x_text = attention(q, k, v)  # [B, L, N, d]
        # 2. fusion attention: the same q, rotated with our positions; keys with theirs
        y = self.pre_attn_norm_fusion(target).to(x.dtype)  # [B, Lo, Do]
        k2, v2 = self.project("kv_fusion", y)  # [B, Lo, D] each
        k2 = rope_apply(self._heads(self.norm_k_fusion(k2)), target_rope)  # [B, Lo, N, d]
        attend = self.attend or attention
        x_fused = attend(rope_apply(q, rope), k2, self._heads(v2))  # [B, L, N, d]
        # 1.'s output projection of the sum
        return self.o((x_text + x_fused).flatten(2))


# ---------------------------------------------------------------------------------------------
# 4. Block and head
# ---------------------------------------------------------------------------------------------


class TowerInputs(NamedTuple):
    """What one tower's embedding stage hands to the blocks and the head."""

    x: torch.Tensor  # [B, L, D] fp32 tokens
    e: torch.Tensor  # [B, U, D] fp32 time embedding per distinct timestep (U = L: per token)
    e0: torch.Tensor  # [B, U, 6, D] fp32 time projection per distinct timestep
    index: torch.Tensor | None  # [L] row of e/e0 for each token; None when U is 1 or L
    # [B, text_len, D] embedded (zero-padded) text, compute dtype; None before the text is
    # embedded (`WanTower.embed_latents`)
    context: torch.Tensor | None
    rope: Rope  # (cos, sin) [L, d/2] fp32
    grid: tuple[int, ...]  # (F, H', W') video, (L,) audio
    dtype: torch.dtype  # the model's compute dtype (`FusionModel.dtype`)
    # this layer's text keys/values ([B, Lt, N, d] each) from a clip cache, else None
    text_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def rows(self, sl: slice) -> TowerInputs:
        """The same inputs for batch rows `sl` only."""
        kv = None if self.text_kv is None else (self.text_kv[0][sl], self.text_kv[1][sl])
        context = None if self.context is None else self.context[sl]
        return self._replace(
            x=self.x[sl], e=self.e[sl], e0=self.e0[sl], context=context, text_kv=kv
        )

    def repeat(self, n: int) -> TowerInputs:
        """The per-sample inputs (x, e, e0) repeated n times along the batch (rows [0, B) then
        [B, 2B), ...); the text is left as it is."""
        x, e, e0 = (torch.cat([y] * n) for y in (self.x, self.e, self.e0))
        return self._replace(x=x, e=e, e0=e0)


class FusionBlock(nn.Module):
    """One Wan block of one tower. `fusion_layer` interleaves the two towers' block i: audio
    `self_attention`, video `self_attention`, audio `cross_attention_ffn` (target: video after
    its self-attention), video `cross_attention_ffn` (target: audio after ITS self-attention,
    before its cross-attention). The sections below are numbered in that order of use."""

    def __init__(self, config: TowerConfig, target_dim: int) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        # 1. self-attention
        self.norm1 = LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, config.qk_norm, eps)
        # 2. cross-attention to the text and to the other tower
        self.norm3 = (
            LayerNorm(dim, eps=eps, elementwise_affine=True)
            if config.cross_attn_norm
            else nn.Identity()
        )
        self.cross_attn = FusionCrossAttention(
            dim, config.num_heads, config.qk_norm, eps, target_dim
        )
        # 3. feed-forward
        self.norm2 = LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, dim),
        )
        # 4. adaLN table: shift/scale/gate for 1., then for 3.
        self.modulation = Modulation(dim, 6)

    def modulate(self, e0: torch.Tensor) -> list[torch.Tensor]:
        """4. e0: [B, U, 6, D] fp32 -> six [B, U, D] fp32 chunks m0..m5."""
        return self.modulation(e0)

    def self_attention(
        self, x: torch.Tensor, m: list[torch.Tensor], inputs: TowerInputs
    ) -> torch.Tensor:
        """1. x: [B, L, D] fp32 -> x + SA(LN(x)(1+m1)+m0) * m2, fp32."""
        shift, scale, gate = (_per_token(c, inputs.index) for c in m[0:3])
        h = self.norm1(x) * (1 + scale) + shift  # fp32
        return x + self.self_attn(h.to(inputs.dtype), inputs.rope).float() * gate

    def cross_attention_ffn(
        self,
        x: torch.Tensor,
        m: list[torch.Tensor],
        inputs: TowerInputs,
        target: torch.Tensor,
        target_rope: Rope,
    ) -> torch.Tensor:
        """2. and 3. x: [B, L, D] fp32, target: [B, Lo, Do] fp32 stream of the other tower,
        target_rope: its (cos, sin) [Lo, d/2] -> [B, L, D] fp32."""
        dtype = inputs.dtype
        # 2. cross-attention (no gate)
        h = self.norm3(x).to(dtype)
        x = (
            x
            + self.cross_attn(
                h, inputs.context, target, inputs.rope, target_rope, inputs.text_kv
            ).float()
        )
        # 3. feed-forward
        shift, scale, gate = (_per_token(c, inputs.index) for c in m[3:6])
        h = self.norm2(x) * (1 + scale) + shift  # fp32
        return x + self.ffn(h.to(dtype)).float() * gate


class Head(nn.Module):
    """out = head(LN(x) * (1 + scale) + shift), modulated by e (not e0) + `modulation` [1, 2, D]."""

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        # 1. output norm (fp32)
        self.norm = LayerNorm(dim, eps=eps, elementwise_affine=False)
        # 2. output projection
        self.head = nn.Linear(dim, out_features)
        # 1.'s modulation table: (shift, scale) = modulation + e, fp32
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, inputs: TowerInputs) -> torch.Tensor:
        """x: [B, L, D] fp32 -> [B, L, out_features] fp32 (uses inputs.e [B, U, D])."""
        # 1. output norm, modulated
        shift, scale = (self.modulation.float() + inputs.e[:, :, None]).unbind(2)  # [B, U, D] each
        h = self.norm(x) * (1 + _per_token(scale, inputs.index)) + _per_token(shift, inputs.index)
        # 2. output projection
        return self.head(h.to(inputs.dtype)).float()


# ---------------------------------------------------------------------------------------------
# 5. Clip cache: what stays fixed for a whole clip
# ---------------------------------------------------------------------------------------------


class ClipCache:
    """Values that stay the same for every step of one clip, computed once while active:
    the RoPE tables per grid, each tower's embedded text and its per-layer text keys/values
    (both guidance passes: one entry per text tensor). Exact: the same ops on the same inputs.

    A text entry is keyed by the tensor's identity and version, and keeps a reference to it, so
    an id cannot be reused while cached and an in-place change misses. `FusionModel.clip()`
    activates it for one clip and empties it after (the K/V of 30 layers x 2 towers x 2 texts
    are ~0.7 GiB at full size, freed before the VAE decode)."""

    def __init__(self, fp32_weights: bool = False) -> None:
        self.active = False
        # keep the fp32 copies of the time MLPs' weights (`Fp32Sequential`) for the clip
        self.fp32_weights = fp32_weights
        self._entries: dict[tuple[Any, ...], tuple[torch.Tensor | None, Any]] = {}
        # one guidance pass's text-free work, for the next pass on the same inputs (`share`)
        self._shared: tuple[tuple[Any, ...], tuple[torch.Tensor, ...], Any] | None = None

    def clear(self) -> None:
        self._entries.clear()
        self._shared = None

    def share(self, key: tuple[Any, ...], tensors: tuple[torch.Tensor, ...], value: Any) -> None:
        """Keep `value`, computed from `tensors` (by identity and version) and `key`, for one
        `take` (one slot: the text-free first-layer work of a guidance pass)."""
        self._shared = (self._key(key, tensors), tensors, value)

    def take(self, key: tuple[Any, ...], tensors: tuple[torch.Tensor, ...]) -> Any:
        """The value `share`d for the same key and the same tensors (same identity, unchanged
        since), else None; the slot is emptied either way (a stale entry frees at once)."""
        shared, self._shared = self._shared, None
        if shared is None or shared[0] != self._key(key, tensors):
            return None
        return shared[2]

    @staticmethod
    def _key(key: tuple[Any, ...], tensors: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
        return (*key, *((id(x), x._version) for x in tensors))

    def get(self, key: tuple[Any, ...], tensor: torch.Tensor | None) -> Any:
        full = key if tensor is None else (*key, id(tensor), tensor._version)
        hit = self._entries.get(full)
        return None if hit is None else hit[1]

    def put(self, key: tuple[Any, ...], tensor: torch.Tensor | None, value: Any) -> Any:
        full = key if tensor is None else (*key, id(tensor), tensor._version)
        self._entries[full] = (tensor, value)
        return value


def _cached(
    cache: ClipCache | None,
    key: tuple[Any, ...],
    tensor: torch.Tensor | None,
    fn: Callable[[], Any],
) -> Any:
    """fn() through an active clip cache (by `key` and `tensor`'s identity), else fn()."""
    if cache is None or not cache.active:
        return fn()
    value = cache.get(key, tensor)
    return value if value is not None else cache.put(key, tensor, fn())


# ---------------------------------------------------------------------------------------------
# 6. Tower
# ---------------------------------------------------------------------------------------------


def audio_mlp_hidden(dim: int, multiple_of: int = 256) -> int:
    """Hidden width of the audio ConvMLP: int(2 * 4 * dim / 3) rounded up to `multiple_of`."""
    return multiple_of * math.ceil(int(2 * 4 * dim / 3) / multiple_of)


class ConvMLP(nn.Module):
    """Gated conv MLP over time: w2(silu(w1 x) * w3 x), bias-free Conv1d, kernel 7, pad 3."""

    def __init__(self, dim: int, hidden: int, kernel: int = AUDIO_EMBED_KERNEL) -> None:
        super().__init__()
        pad = kernel // 2
        self.w1 = nn.Conv1d(dim, hidden, kernel, padding=pad, bias=False)
        self.w2 = nn.Conv1d(hidden, dim, kernel, padding=pad, bias=False)
        self.w3 = nn.Conv1d(dim, hidden, kernel, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, D, L] -> [B, D, L]."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class WanTower(nn.Module):
    """One Wan DiT tower (video `ti2v` or audio `t2a`). `embed_latents` and `embed_context` run
    sections 1 and 2;
    `FusionModel.forward` runs 3 (interleaved with the other tower's blocks) and 4."""

    def __init__(self, config: TowerConfig, target_dim: int) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        # 1. patch & position embedding (RoPE has no weights: computed per forward)
        if config.modality == "video":
            self.patch_embedding: nn.Module = nn.Conv3d(
                config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size
            )
        else:
            if tuple(config.patch_size) != (1,):
                raise ValueError(f"audio tower needs patch_size (1,), got {config.patch_size}")
            self.patch_embedding = nn.Sequential(
                nn.Conv1d(config.in_dim, dim, AUDIO_EMBED_KERNEL, padding=AUDIO_EMBED_KERNEL // 2),
                nn.SiLU(),
                ConvMLP(dim, audio_mlp_hidden(dim)),
            )
        # 2. condition embeddings: text (compute dtype), time (fp32 islands)
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = Fp32Sequential(
            nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = Fp32Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        # 3. blocks
        self.blocks = nn.ModuleList(
            FusionBlock(config, target_dim) for _ in range(config.num_layers)
        )
        # 4. output norm & projection
        self.head = Head(dim, config.out_dim * math.prod(config.patch_size), config.eps)

    def embed_latents(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        first_frame_is_clean: bool = False,
        time_per_token: bool = False,
        *,
        dtype: torch.dtype,
        cache: ClipCache | None = None,
    ) -> TowerInputs:
        """Sections 1 and 2 without the text (patch embedding, RoPE, time embedding): the same
        for both guidance passes. latents: video [B, C, F, H, W] or audio [B, La, Ca]; t: [B];
        dtype: the compute dtype. Returns `TowerInputs` with `context` None (`embed_context`).

        time_per_token: run the time MLPs on every token's timestep (the official form: same
        values, L times the work) instead of once per distinct timestep.
        cache: a clip cache (`ClipCache`, active) keeps the RoPE tables (and, with
        `fp32_weights`, the time MLPs' float32 weights)."""
        cfg = self.config
        # 1. patch & position embedding: tokens, then RoPE for their grid
        if cfg.modality == "video":
            x = self.patch_embedding(latents.to(dtype))  # [B, D, F, H', W']
            grid = tuple(x.shape[2:])
            x = x.flatten(2).transpose(1, 2)  # [B, Lv, D], (f, h, w) order
        else:
            x = self.patch_embedding(latents.to(dtype).transpose(1, 2))  # [B, D, La]
            grid = (x.shape[2],)
            x = x.transpose(1, 2)  # [B, La, D]
        x = x.float()  # the residual stream is fp32
        num_tokens = x.shape[1]
        rope = _cached(cache, ("rope", grid, cfg.head_dim, cfg.rope_scale, x.device), None,
                       lambda: rope_tables(grid, cfg.head_dim, cfg.rope_scale, x.device))  # fmt: skip

        # 2. condition embeddings
        # time: features per distinct timestep, gathered per token through `index`
        if first_frame_is_clean:  # frame 0 (the first H'*W' tokens) is clean: t = 0
            rows = torch.stack([torch.zeros_like(t), t], dim=1)  # [B, 2]
            frame0 = grid[1] * grid[2]
            index = (torch.arange(num_tokens, device=x.device) >= frame0).long()  # [Lv]
        else:
            rows, index = t[:, None], None  # [B, 1]
        if time_per_token:
            rows = _per_token(rows, index).expand(-1, num_tokens)  # [B, L]
            index = None
        e = self.time_embedding(sinusoidal_embedding(rows, cfg.freq_dim), cache=cache)  # [B, U, D]
        e0 = self.time_projection(e, cache=cache).unflatten(-1, (6, cfg.dim))  # [B, U, 6, D] fp32
        return TowerInputs(x, e, e0, index, None, rope, grid, dtype)

    def embed_context(
        self,
        context: torch.Tensor,
        dtype: torch.dtype,
        cache: ClipCache | None = None,
        cache_text: bool = True,
    ) -> torch.Tensor:
        """`embed_text` through an active clip cache (`cache_text`: keyed by the text tensor)."""
        text_cache = cache if cache_text else None
        return _cached(text_cache, ("text", id(self), dtype), context,
                       lambda: self.embed_text(context, dtype))  # fmt: skip

    def embed_text(self, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, Lt, Dt] -> [B, text_len, D] (compute dtype): zero-padded to text_len, every row
        embedded (no mask downstream)."""
        pad = self.config.text_len - context.shape[1]
        return self.text_embedding(F.pad(context.to(dtype), (0, 0, 0, pad)))

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Head output [B, L, prod(patch) * C] -> video [B, C, F, H, W] / audio [B, La, C]."""
        if self.config.modality == "audio":
            return out
        pt, ph, pw = self.config.patch_size
        u = out.unflatten(1, grid).unflatten(-1, (pt, ph, pw, -1))  # [B, F, H', W', pt, ph, pw, C]
        u = torch.einsum("bfhwpqrc->bcfphqwr", u)  # [B, C, F, pt, H', ph, W', pw]
        return u.reshape(
            u.shape[0], u.shape[1], *(g * p for g, p in zip(grid, (pt, ph, pw), strict=True))
        )


# ---------------------------------------------------------------------------------------------
# 7. The fusion model
# ---------------------------------------------------------------------------------------------


def _skipped(i: int, slg_layer: int | bool | None) -> bool:
    """Skip-layer guidance: block i of both towers is skipped when slg_layer = i > 0."""
    return slg_layer is not None and int(slg_layer) > 0 and i == int(slg_layer)


Modulations = tuple[list[torch.Tensor], list[torch.Tensor]]  # (video m0..m5, audio m0..m5)


def layer_modulations(
    video_block: FusionBlock, audio_block: FusionBlock, vid: TowerInputs, aud: TowerInputs
) -> Modulations:
    """Both blocks' adaLN chunks for one layer (per token under `time_per_token`: [B, L, D])."""
    return video_block.modulate(vid.e0), audio_block.modulate(aud.e0)


def fusion_layer(
    video_block: FusionBlock,
    audio_block: FusionBlock,
    v: torch.Tensor,
    a: torch.Tensor,
    vid: TowerInputs,
    aud: TowerInputs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i of the fusion model: block i of both towers, interleaved.

    v: [B, Lv, Dv], a: [B, La, Da], fp32 residual streams -> the same after the layer. The unit
    of regional compilation (`FusionModel.layer_fn`): every layer has the same code and shapes,
    so one compiled graph serves all of them. Its two halves: steps 1-2 (the self-attentions,
    `fusion_layer_self`), then steps 3-4 (text and fusion cross-attention and FFN,
    `fusion_layer_cross`), on one set of modulations.
    """
    m = layer_modulations(video_block, audio_block, vid, aud)
    v, a = fusion_layer_self(video_block, audio_block, v, a, vid, aud, m)
    return fusion_layer_cross(video_block, audio_block, v, a, vid, aud, m)


def fusion_layer_self(
    video_block: FusionBlock,
    audio_block: FusionBlock,
    v: torch.Tensor,
    a: torch.Tensor,
    vid: TowerInputs,
    aud: TowerInputs,
    m: Modulations | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 and 2 of `fusion_layer` (both self-attentions): nothing of the text yet, so the
    two guidance passes agree on it in the first layer. m: `layer_modulations` (computed here
    when None)."""
    mv, ma = layer_modulations(video_block, audio_block, vid, aud) if m is None else m
    a = audio_block.self_attention(a, ma, aud)  # step 1
    v = video_block.self_attention(v, mv, vid)  # step 2
    return v, a


def fusion_layer_cross(
    video_block: FusionBlock,
    audio_block: FusionBlock,
    v: torch.Tensor,
    a: torch.Tensor,
    vid: TowerInputs,
    aud: TowerInputs,
    m: Modulations | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 3 and 4 of `fusion_layer` on the streams after `fusion_layer_self`. m: as there."""
    mv, ma = layer_modulations(video_block, audio_block, vid, aud) if m is None else m
    a_next = audio_block.cross_attention_ffn(a, ma, aud, v, vid.rope)  # step 3: target = v
    v = video_block.cross_attention_ffn(v, mv, vid, a, aud.rope)  # step 4: target = a (step 1)
    return v, a_next


LayerFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # fusion_layer's signature


class LayerWeights(Protocol):
    """Puts layer weights where they compute (block offload, `model/optimize/`)."""

    def begin(self, layers: list[int]) -> None:
        """A forward will run these layers, in this order."""

    def fetch(self, i: int) -> None:
        """Layer i's weights must be on the compute device from now until `release(i)`."""

    def release(self, i: int) -> None:
        """Layer i's compute has been queued; its device copy may be reused after it."""


class FusionModel(nn.Module):
    """Ovi fusion DiT: `video_model` (Wan2.2 ti2v) and `audio_model` (t2a) with cross-modal
    attention in every block. Predicts the flow for both latents.

    Build on the meta device and load with `model/convert/fusion.py:load_fusion` (strict, assign);
    the model has no buffers to materialise (see the module docstring).
    """

    # Modules (and the head's `modulation` table) that compute in float32 whatever the weight
    # dtype, matched by their last name part: the fp32 islands of the module docstring.
    fp32_modules: ClassVar[tuple[str, ...]] = (
        "time_embedding",
        "time_projection",
        "modulation",
        "norm1",
        "norm2",
        "norm3",
        "norm_q",
        "norm_k",
        "pre_attn_norm_fusion",
        "norm_k_fusion",
        "norm",
    )

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        video, audio = config.video, config.audio
        if video.modality != "video" or audio.modality != "audio":
            raise ValueError("FusionConfig needs a video tower and an audio tower")
        if video.num_layers != audio.num_layers:
            raise ValueError(f"towers differ in depth: {video.num_layers} vs {audio.num_layers}")
        if video.head_dim != audio.head_dim or video.dim % video.num_heads:
            raise ValueError("towers must share one head_dim (fusion RoPE rotates across them)")
        self.config = config
        # 1.-4. each tower: patch & position embedding, condition embeddings, blocks, head
        self.video_model = WanTower(video, target_dim=audio.dim)
        self.audio_model = WanTower(audio, target_dim=video.dim)
        # run-time switches, not weights (model/optimize/ sets them; see the module docstring)
        self.layer_fn: LayerFn = fusion_layer
        # the first layer in two halves (`fusion_layer_self`, `fusion_layer_cross`) where the
        # guidance passes share its text-free half (`share_first_layer`); compiled with layer_fn
        self.layer_halves: tuple[LayerFn, LayerFn] = (fusion_layer_self, fusion_layer_cross)
        # compute the text-free work (embeddings, first-layer self-attention) once for both
        # guidance passes: `forward_cfg` on B rows, sequential passes through the clip cache
        self.share_first_layer = False
        self.offload: LayerWeights | None = None
        self.time_per_token = False
        self.clip_cache: ClipCache | None = None  # per-clip reuse while `clip()` is active

    @contextlib.contextmanager
    def clip(self) -> Iterator[FusionModel]:
        """One clip's sampling loop: with a `clip_cache` set, the RoPE tables, embedded texts
        and text keys/values are computed once and reused by every step (and, with
        `share_first_layer`, a pass's text-free work by the next pass); emptied on exit."""
        cache = self.clip_cache
        if cache is None or cache.active:  # no cache, or an outer clip() owns it
            yield self
            return
        cache.clear()
        cache.active = True
        try:
            yield self
        finally:
            cache.active = False
            cache.clear()

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the weight dtype of the layers no fast-path switch replaces."""
        return self.video_model.text_embedding[0].weight.dtype

    def _check_inputs(self, video: Tensor, audio: Tensor, t: Tensor, context: Context) -> None:
        """Raise ValueError naming the first input whose shape does not fit the config."""
        vc, ac = self.config.video, self.config.audio
        if video.ndim != 5 or video.shape[1] != vc.in_dim:
            raise ValueError(f"video must be [B, {vc.in_dim}, F, H, W], got {list(video.shape)}")
        batch_size, _, num_frames, height, width = video.shape
        if any(s % p for s, p in zip((num_frames, height, width), vc.patch_size, strict=True)):
            raise ValueError(f"video grid {list(video.shape[2:])} not divisible by {vc.patch_size}")
        if audio.ndim != 3 or audio.shape[0] != batch_size or audio.shape[2] != ac.in_dim:
            raise ValueError(
                f"audio must be [{batch_size}, La, {ac.in_dim}], got {list(audio.shape)}"
            )
        if t.numel() not in (1, batch_size):
            raise ValueError(f"t must hold 1 or {batch_size} timesteps, got {t.numel()}")
        for name, ctx, cfg in (("video", context[0], vc), ("audio", context[1], ac)):
            if ctx.ndim != 3 or ctx.shape[0] != batch_size or ctx.shape[2] != cfg.text_dim:
                raise ValueError(
                    f"{name}_context must be [{batch_size}, Lt, {cfg.text_dim}],"
                    f" got {list(ctx.shape)}"
                )
            if ctx.shape[1] > cfg.text_len:
                raise ValueError(
                    f"{name}_context has {ctx.shape[1]} rows, more than text_len {cfg.text_len}"
                )

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        t: torch.Tensor,
        video_context: torch.Tensor,
        audio_context: torch.Tensor,
        first_frame_is_clean: bool = False,
        slg_layer: int | bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow predictions for both latents.

        video: [batch_size, C, num_frames, height, width] latents; audio: [batch_size, La, Ca];
        t: [batch_size] or [1] (int or float timesteps); video_context: [batch_size, Ltv, Dt],
        audio_context: [batch_size, Lta, Dt], Lt <= text_len (zero-padded here; a batch of
        different prompt lengths may be zero-padded by the caller, same result).
        first_frame_is_clean: the video tower uses t = 0 for latent frame 0 (i2v).
        slg_layer: i > 0 skips block i of both towers; None/False/0 (or < 0) skips nothing.
        Returns (video [batch_size, C, num_frames, height, width], audio [batch_size, La, Ca]),
        float32.
        """
        context = (video_context, audio_context)
        self._check_inputs(video, audio, t, context)
        return self._forward(video, audio, t, context, first_frame_is_clean, slg_layer)

    def forward_cfg(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        t: torch.Tensor,
        context_pos: Context,
        context_neg: Context,
        first_frame_is_clean: bool = False,
        slg_layer: int | bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both classifier-free-guidance passes as one batch of 2B.

        Equal (to float rounding) to `forward(video, audio, t, *context_pos)` and
        `forward(video, audio, t, *context_neg, slg_layer=slg_layer)`: rows [0, B) are the
        positive pass, rows [B, 2B) the negative one, and layer `slg_layer` runs on the
        positive rows only. context_*: (video [B, Ltv, Dt], audio [B, Lta, Dt]).
        Returns (video_pos, audio_pos, video_neg, audio_neg).
        """
        for context in (context_pos, context_neg):
            self._check_inputs(video, audio, t, context)
        b = video.shape[0]
        t = t.reshape(-1).to(video.device).expand(b)
        padded = [
            torch.cat([F.pad(c, (0, 0, 0, cfg.text_len - c.shape[1])) for c in pair])
            for pair, cfg in (
                ((context_pos[0], context_neg[0]), self.config.video),
                ((context_pos[1], context_neg[1]), self.config.audio),
            )
        ]  # [2B, text_len, Dt] each; the tower zero-pads the same way
        if self.share_first_layer:  # the text-free work on B rows, then repeated to 2B
            v, a = self._forward(
                video, audio, t, (padded[0], padded[1]), first_frame_is_clean, slg_layer,
                slg_rows_from=b, cache_text=False, repeat=2,
            )  # fmt: skip
            return v[:b], a[:b], v[b:], a[b:]
        v, a = self._forward(
            torch.cat([video, video]),
            torch.cat([audio, audio]),
            torch.cat([t, t]),
            (padded[0], padded[1]),
            first_frame_is_clean,
            slg_layer,
            slg_rows_from=b,
            cache_text=False,  # the joined texts are new tensors every call
        )
        return v[:b], a[:b], v[b:], a[b:]

    def _forward(
        self,
        video: Tensor,
        audio: Tensor,
        t: Tensor,
        context: Context,
        first_frame_is_clean: bool,
        slg_layer: int | bool | None,
        slg_rows_from: int = 0,
        cache_text: bool = True,
        repeat: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """`forward` after the input checks; the skipped layer skips rows >= slg_rows_from;
        cache_text: an active clip cache may keep the texts' embeddings and keys/values.

        With `share_first_layer`, the text-free work (embeddings, the first layer's
        self-attentions) is the same for every guidance pass: it runs on the B rows of video,
        audio and t and is repeated `repeat` times to the context's batch (`forward_cfg`), and
        with an active clip cache a pass on the same input tensors (identity and version, the
        same first_frame_is_clean) reuses the previous pass's (sequential guidance passes)."""
        t_in = t
        t = t.reshape(-1).to(video.device).expand(video.shape[0])  # [B]
        dtype, per_token, share = self.dtype, self.time_per_token, self.share_first_layer
        if repeat > 1 and not share:
            raise ValueError("repeat > 1 needs share_first_layer")

        # 1. patch & position embedding, 2. condition embeddings: both towers
        video_blocks, audio_blocks = self.video_model.blocks, self.audio_model.blocks
        cache = self.clip_cache if self.clip_cache is not None and self.clip_cache.active else None
        slot = cache if share and repeat == 1 else None  # sequential passes: through the cache
        shared_key = ("first_layer", first_frame_is_clean, per_token, dtype)
        shared = None if slot is None else slot.take(shared_key, (video, audio, t_in))
        if shared is None:
            vid = self.video_model.embed_latents(
                video, t, first_frame_is_clean, per_token, dtype=dtype, cache=cache
            )
            aud = self.audio_model.embed_latents(
                audio, t, time_per_token=per_token, dtype=dtype, cache=cache
            )
        else:  # embeddings and first-layer self-attentions of the previous pass (x: after them)
            vid, aud = shared
        vid = vid._replace(
            context=self.video_model.embed_context(context[0], dtype, cache, cache_text)
        )
        aud = aud._replace(
            context=self.audio_model.embed_context(context[1], dtype, cache, cache_text)
        )
        # the embedded texts' per-layer keys/values, filled as the layers first run
        kv_v = kv_a = None
        if cache is not None and cache_text:
            kv_v = _cached(cache, ("kv", 0), vid.context, lambda: [None] * len(video_blocks))
            kv_a = _cached(cache, ("kv", 1), aud.context, lambda: [None] * len(audio_blocks))

        # 3. blocks: the fusion layers (both residual streams stay fp32)
        v, a = vid.x, aud.x
        vid_i, aud_i = vid, aud
        layers = [
            i for i in range(len(video_blocks)) if slg_rows_from > 0 or not _skipped(i, slg_layer)
        ]
        if self.offload is not None:
            self.offload.begin(layers)
        for i in layers:
            if self.offload is not None:
                self.offload.fetch(i)
            if share and i == 0:  # (layer 0 is never skipped) its text-free half, once
                if shared is None:
                    v, a = self.layer_halves[0](video_blocks[0], audio_blocks[0], v, a, vid, aud)
                    if slot is not None:
                        slot.share(shared_key, (video, audio, t_in),
                                   (vid._replace(x=v, context=None), aud._replace(x=a, context=None)))  # fmt: skip
                if repeat > 1:
                    vid, aud = vid._replace(x=v).repeat(repeat), aud._replace(x=a).repeat(repeat)
                    v, a = vid.x, aud.x
                    vid_i, aud_i = vid, aud
            if kv_v is not None and kv_a is not None:  # after fetch: the layer's weights are here
                if kv_v[i] is None:
                    kv_v[i] = video_blocks[i].cross_attn.text_kv(vid.context)
                if kv_a[i] is None:
                    kv_a[i] = audio_blocks[i].cross_attn.text_kv(aud.context)
                vid_i, aud_i = vid._replace(text_kv=kv_v[i]), aud._replace(text_kv=kv_a[i])
            if share and i == 0:
                v, a = self.layer_halves[1](video_blocks[0], audio_blocks[0], v, a, vid_i, aud_i)
            elif not _skipped(i, slg_layer):
                v, a = self.layer_fn(video_blocks[i], audio_blocks[i], v, a, vid_i, aud_i)
            else:  # skip-layer guidance on rows >= slg_rows_from only
                run = slice(0, slg_rows_from)
                v_run, a_run = self.layer_fn(
                    video_blocks[i], audio_blocks[i], v[run], a[run], vid_i.rows(run),
                    aud_i.rows(run),
                )  # fmt: skip
                v = torch.cat([v_run, v[slg_rows_from:]])
                a = torch.cat([a_run, a[slg_rows_from:]])
            if self.offload is not None:
                self.offload.release(i)

        # 4. output norm & projection: both heads, then the video unpatchify
        video_out = self.video_model.head(v, vid)  # [B, Lv, prod(patch) * C]
        audio_out = self.audio_model.head(a, aud)  # [B, La, Ca]
        return self.video_model.unpatchify(video_out, vid.grid), audio_out
