"""Attention over a token sequence split across the ranks of a sequence-parallel group.

Both are callables with the signature of `modules.attention.attention` (q, k, v: [B, c, N, d],
this rank's shard of c = ceil(L / sp) tokens, padded at the end) and are what
`SelfAttention.attend` holds during a sequence-parallel forward (`model/parallel/fusion.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..modules.attention import attention
from .comm import gather_seq, group_rank, group_size, heads_to_seq, pad_heads, seq_to_heads


@dataclass(frozen=True)
class UlyssesAttention:
    """Self-attention: all-to-all the sequence split into a head split, attend over every
    token, all-to-all back (DeepSpeed-Ulysses).

    `length` is the real sequence length L; the rows past it (padding of the last shards) are
    sliced off before attending, so they are neither keys nor queries. Heads that `sp` does not
    divide are zero-padded up to a multiple of it (a zero head attends to zeros and is dropped).
    Per call each rank sends and receives 3 tensors of [B, c, N, d] in and 1 out, of which
    (sp - 1) / sp crosses the link.
    """

    group: Any
    length: int

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: [B, c, N, d] -> [B, c, N, d]."""
        sp, heads = group_size(self.group), q.shape[2]
        full = [seq_to_heads(pad_heads(x, sp), self.group) for x in (q, k, v)]  # [B, sp*c, h, d]
        padded = full[0].shape[1]
        out = attention(*(x[:, : self.length] for x in full))  # [B, L, h, d]
        out = F.pad(out, (0, 0, 0, 0, 0, padded - self.length))  # [B, sp*c, h, d]
        return heads_to_seq(out, self.group)[:, :, :heads]  # [B, c, N, d]


@dataclass(frozen=True)
class GatheredKVAttention:
    """Fusion attention: this rank's queries attend to the other tower's whole stream, so its
    keys and values (projected, normed and rotated on their own shards) are all-gathered
    (2 x [B, Lo, N, d] received per call) and sliced to their real length `length` = Lo."""

    group: Any
    length: int

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [B, c, N, d]; k, v: [B, co, N, d] shards of the other tower -> [B, c, N, d]."""
        k, v = (gather_seq(x, self.length, self.group) for x in (k, v))  # [B, Lo, N, d]
        return attention(q, k, v)


@dataclass(frozen=True)
class ShardedKVAttention:
    """Fusion attention with short queries and long sharded keys (audio queries, video keys):
    the queries are all-gathered instead of the keys, each rank attends to its own key shard,
    and the partial softmax sums are merged exactly (a shared max, then all-reduced sums).

    Per call each rank sends its query shard [B, cq, N, d] to the others and all-reduces three
    fp32 tensors of [B, N, sp cq] (max, sum) and [B, N, sp cq, d] (weighted values): for Ovi's
    157 audio tokens about 2 MB, instead of the whole video key/value stream (92 MB at 704x704).
    Computed in fp32 (not the fused kernel): equal to float rounding, not bit for bit.
    `length`: the real length of the sharded keys (their padding rows are never attended).
    """

    group: Any
    length: int

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [B, cq, N, d] query shard; k, v: [B, c, N, d] key shard -> [B, cq, N, d]."""
        sp, me, cq, c = group_size(self.group), group_rank(self.group), q.shape[1], k.shape[1]
        real = max(0, min(c, self.length - me * c))  # this shard's keys that are not padding
        queries = gather_seq(q, sp * cq, self.group).float().transpose(1, 2)  # [B, N, Lq, d]
        keys = k[:, :real].float().transpose(1, 2)  # [B, N, real, d]
        values = v[:, :real].float().transpose(1, 2)
        scores = queries @ keys.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, N, Lq, real]
        top = (
            scores.amax(-1, keepdim=True)
            if real
            else queries.new_full((*queries.shape[:-1], 1), float("-inf"))
        )  # [B, N, Lq, 1]
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.group)
        weights = torch.exp(scores - top)  # [B, N, Lq, real]
        total = weights.sum(-1, keepdim=True)  # [B, N, Lq, 1]
        out = weights @ values  # [B, N, Lq, d]
        dist.all_reduce(total, group=self.group)
        dist.all_reduce(out, group=self.group)
        out = (out / total).transpose(1, 2).to(q.dtype)  # [B, Lq, N, d]
        return out[:, me * cq : (me + 1) * cq]
