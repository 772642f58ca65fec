"""Bytes one denoising step sends between ranks (the table of `model/parallel/__init__.py`).

An estimate from the shapes alone (what each collective moves), for the bench and the README;
a multi-GPU machine's measured times are the real figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import FusionConfig
from .groups import shard_len


@dataclass(frozen=True)
class StepVolume:
    ranks: int
    cfg: int
    sp: int
    per_rank_bytes: float  # what one rank sends per step (the busiest kind of rank)
    total_bytes: float  # summed over all ranks
    per_layer_rank_bytes: float  # one rank, one fusion layer, one pass


def step_volume(
    fusion: FusionConfig,
    video_tokens: int,
    audio_tokens: int,
    *,
    cfg: int,
    sp: int,
    act_bytes: int = 2,
) -> StepVolume:
    """Bytes per denoising step on `cfg x sp` ranks: video_tokens = F * h/2 * w/2 (Lv),
    audio_tokens = La; activations in `act_bytes` (2: bf16), predictions fp32."""
    v, a = fusion.video, fusion.audio
    layers = v.num_layers
    per_layer = 0.0
    head_gather = 0.0
    if sp > 1:
        cv, ca = shard_len(video_tokens, sp), shard_len(audio_tokens, sp)
        heads = shard_len(v.num_heads, sp) * sp  # padded to a multiple of sp
        leave = (sp - 1) / sp
        ulysses = 4 * (cv + ca) * heads * v.head_dim * leave  # q, k, v in, o out, both towers
        # fusion attention (`fusion.fusion_attention`): the shorter stream moves. Long queries
        # gather the short side's k, v; short queries are gathered and their partial softmax
        # sums all-reduced in fp32 (max and sum [N, Lq], values [N, Lq, d]; ring all-reduce).
        short = min(cv, ca)
        gathered_kv = 2 * short * v.dim * (sp - 1) * act_bytes
        gathered_q = short * v.dim * (sp - 1) * act_bytes
        reduced = (2 * v.num_heads + v.dim) * sp * short * 4 * 2 * (sp - 1) / sp
        per_layer = ulysses * act_bytes + gathered_kv + gathered_q + reduced
        out_v = v.out_dim * math.prod(v.patch_size)  # 48 * (1*2*2) = 192 values per token
        head_gather = (cv * out_v + ca * a.out_dim) * 4 * (sp - 1)
    passes = 1 if cfg == 2 else 2
    per_rank = passes * (layers * per_layer + head_gather)
    if cfg == 2:  # each rank sends its fp32 predictions to its CFG partner
        out_v = v.out_dim * math.prod(v.patch_size)
        per_rank += (video_tokens * out_v + audio_tokens * a.out_dim) * 4
    return StepVolume(cfg * sp, cfg, sp, per_rank, per_rank * cfg * sp, per_layer)
