"""The collectives of one clip on several ranks: Ulysses all-to-all, padded gathers, halos.

Every function takes the process group it runs on and is called by every rank of that group in
the same order (the callers keep their control flow identical on all ranks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .groups import shard_len


def group_size(group: Any) -> int:
    return dist.get_world_size(group)


def group_rank(group: Any) -> int:
    return dist.get_rank(group)


def seq_to_heads(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Ulysses all-to-all: this rank's tokens of every head -> every token of its heads.

    x: [B, c, Np, d] (c tokens per rank, Np heads divisible by sp) -> [B, sp * c, Np / sp, d],
    tokens in global order (rank i's shard is rows [i*c, (i+1)*c))."""
    sp = group_size(group)
    b, c, n, d = x.shape
    send = x.reshape(b, c, sp, n // sp, d).permute(2, 0, 1, 3, 4).contiguous()  # [sp, B, c, h, d]
    recv = torch.empty_like(send)  # [sp (source rank), B, c, h, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, sp * c, n // sp, d)


def heads_to_seq(x: torch.Tensor, group: Any) -> torch.Tensor:
    """The inverse all-to-all: [B, sp * c, h, d] (every token, this rank's heads) ->
    [B, c, sp * h, d] (this rank's tokens, every head)."""
    sp = group_size(group)
    b, length, h, d = x.shape
    c = length // sp
    send = x.reshape(b, sp, c, h, d).permute(1, 0, 2, 3, 4).contiguous()  # [sp, B, c, h, d]
    recv = torch.empty_like(send)  # [sp (source head group), B, c, h, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, c, sp * h, d)


def gather_seq(x: torch.Tensor, length: int, group: Any, dim: int = 1) -> torch.Tensor:
    """All-gather equal (padded) shards along `dim` and drop the padding: every rank gets the
    first `length` rows of the concatenation."""
    parts = [torch.empty_like(x) for _ in range(group_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim).narrow(dim, 0, length)


def gather_bands(
    x: torch.Tensor, bounds: list[tuple[int, int]], group: Any, dim: int
) -> torch.Tensor:
    """All-gather bands of unequal size along `dim` (rank i holds rows `bounds[i]`, scaled to
    x's resolution by the caller): padded to the largest, gathered, sliced, concatenated."""
    sizes = [end - start for start, end in bounds]
    top = max(sizes)
    pad = [0, 0] * (x.ndim - 1 - dim) + [0, top - x.shape[dim]]
    parts = [torch.empty_like(F.pad(x, pad)) for _ in sizes]
    dist.all_gather(parts, F.pad(x, pad).contiguous(), group=group)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes, strict=True)], dim=dim)


def exchange_halo(x: torch.Tensor, rows: int, group: Any, dim: int = -2) -> torch.Tensor:
    """x with `rows` rows of the neighbouring bands added on both sides along `dim` (zeros
    beyond the first and last band): what a convolution with `rows` rows of zero padding sees
    on the whole image. Bands are in rank order; each holds at least `rows` rows."""
    dim = dim % x.ndim
    n, me = group_size(group), group_rank(group)
    if x.shape[dim] < rows:
        raise ValueError(f"a band of {x.shape[dim]} rows cannot give a halo of {rows}")
    edges = torch.cat([x.narrow(dim, 0, rows), x.narrow(dim, x.shape[dim] - rows, rows)], dim)
    parts = [torch.empty_like(edges) for _ in range(n)]
    dist.all_gather(parts, edges.contiguous(), group=group)
    zeros = x.new_zeros(edges.narrow(dim, 0, rows).shape)
    above = parts[me - 1].narrow(dim, rows, rows) if me > 0 else zeros  # its last rows
    below = parts[me + 1].narrow(dim, 0, rows) if me < n - 1 else zeros  # its first rows
    return torch.cat([above, x, below], dim)


def pad_heads(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """[B, L, N, d] -> [B, L, ceil(N / multiple) * multiple, d] with zero heads appended."""
    extra = shard_len(x.shape[2], multiple) * multiple - x.shape[2]
    return F.pad(x, (0, 0, 0, extra)) if extra else x
