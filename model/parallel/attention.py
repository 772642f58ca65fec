"""Attention over a token sequence split across the ranks of a sequence-parallel group.

Both are callables with the signature of `modules.attention.attention` (q, k, v: [B, c, N, d],
this rank's shard of c = ceil(L / sp) tokens, padded at the end) and are what
`SelfAttention.attend` holds during a sequence-parallel forward (`model/parallel/fusion.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..modules.attention import attention
from .comm import gather_seq, group_size, heads_to_seq, pad_heads, seq_to_heads


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
