"""Rank layout of one clip on `cfg x sp` ranks, and the even token split with padding.

Ranks `c * sp + i` (c < cfg, i < sp): `c` is the guidance pass (0 positive, 1 negative) and `i`
the sequence shard. One sequence-parallel group per pass (`[c*sp, c*sp + sp)`) and one CFG group
per shard (`[i, sp + i]`). `torch.distributed.new_group` must be called by every rank of the
world in the same order, so `ParallelState.create` is called by all of them, members or not; a
state may cover a subset of the world (`ranks`), which the tests use to try several layouts in
one set of processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelState:
    """Where this process sits in a `cfg x sp` layout. `member` is False for a world rank that
    the layout does not use (it must not run the clip)."""

    cfg: int  # 1, or 2 with CFG-parallel
    sp: int  # sequence-parallel degree
    member: bool
    cfg_rank: int  # 0: positive pass, 1: negative pass
    sp_rank: int  # this rank's token shard
    group: Any  # every rank of the layout (VAE decode, seed)
    sp_group: Any  # the ranks of this pass (None when sp == 1)
    cfg_group: Any  # the ranks of this shard (None when cfg == 1)

    @property
    def size(self) -> int:
        return self.cfg * self.sp

    @property
    def rank(self) -> int:
        """Rank inside the layout: cfg_rank * sp + sp_rank."""
        return self.cfg_rank * self.sp + self.sp_rank

    @classmethod
    def create(cls, cfg: int, sp: int, ranks: Sequence[int] | None = None) -> ParallelState:
        """The layout over `ranks` (default: the whole world, whose size must be cfg * sp).
        Every rank of the world calls this, in the same order as the others."""
        if cfg not in (1, 2) or sp < 1:
            raise ValueError(f"cfg must be 1 or 2 and sp at least 1, got cfg={cfg}, sp={sp}")
        if not dist.is_initialized():
            raise ValueError(
                f"cfg={cfg} x sp={sp} needs {cfg * sp} ranks: start them with `ovi generate "
                f"--world-size {cfg * sp}` (CPU), `--gpus` (CUDA) or `model.parallel.launch`"
            )
        world = dist.get_world_size()
        ranks = list(range(world)) if ranks is None else list(ranks)
        if len(ranks) != cfg * sp:
            raise ValueError(f"cfg={cfg} x sp={sp} needs {cfg * sp} ranks, got {len(ranks)}")
        me = dist.get_rank()
        group = dist.new_group(ranks) if len(ranks) < world else dist.group.WORLD
        sp_groups = [dist.new_group(ranks[c * sp : (c + 1) * sp]) for c in range(cfg)]
        cfg_groups = (
            [dist.new_group([ranks[i], ranks[sp + i]]) for i in range(sp)] if cfg > 1 else []
        )
        if me not in ranks:
            return cls(cfg, sp, False, 0, 0, None, None, None)
        local = ranks.index(me)
        cfg_rank, sp_rank = divmod(local, sp)
        return cls(
            cfg,
            sp,
            True,
            cfg_rank,
            sp_rank,
            group,
            sp_groups[cfg_rank] if sp > 1 else None,
            cfg_groups[sp_rank] if cfg > 1 else None,
        )


def shard_len(length: int, parts: int) -> int:
    """Tokens per shard: ceil(length / parts); the last shards are zero-padded up to it."""
    return math.ceil(length / parts)


def shard(x: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    """Shard `index` of `parts` equal shards of x along `dim`, zero-padded at the end of the
    sequence (padding rows are sliced off after every gather)."""
    size = shard_len(x.shape[dim], parts)
    pad = size * parts - x.shape[dim]
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    return x.narrow(dim, index * size, size)


def even_split(length: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` contiguous bands of `length` rows, sizes differing by at most one
    (the VAE's row bands: no padding, every band at least one row when length >= parts)."""
    base, extra = divmod(length, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (i < extra)
        bounds.append((start, end))
        start = end
    return bounds
