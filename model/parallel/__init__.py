"""One clip on several ranks: CFG-parallel, Ulysses sequence parallelism, row-split VAE decode.

Selected by `RuntimeOptions(cfg_parallel=..., sp_degree=...)`: `OviPipeline` then needs a
process group of `(2 if cfg_parallel else 1) * sp_degree` ranks (`launch.launch` starts them;
`ovi generate --world-size N` on the CPU with gloo, `--gpus 0,1,..` with NCCL) and every rank
runs the same pipeline call. The single-process path is untouched. The math is the same as one
process (float rounding only; CFG-parallel alone is bit-identical on the CPU):

- **CFG-parallel** (`fusion.ParallelFusion`): ranks `[0, sp)` run the positive pass, ranks
  `[sp, 2 sp)` the negative (skip-layer) pass; after each step's passes each CFG pair
  all-gathers the two fp32 predictions (video [B, 48, F, h, w] + audio [B, La, 20]).
- **Ulysses sequence parallelism** (`fusion.sequence_parallel_forward`): each tower's tokens
  are split into `sp` equal shards of c = ceil(L / sp) rows (the last ones zero-padded; the
  padding is sliced off before every attention and after the final gather, never attended).
  Embeddings and the time MLPs run whole on each rank; the blocks run on the shard.
- **VAE decode** (`vae.decode_video`): latent rows split over all ranks with one-row halos per
  convolution (exact, see there); the audio decode (small) runs on every rank.
- **Seeds**: rank 0's seed is broadcast, and every rank draws the same CPU-generator noise as
  one process would; every rank holds the same latents after every step.

Communication per fusion layer and per pass, for one rank of an `sp` group (b bytes per element:
2 in bf16; N heads of d, D = N d; heads padded to Np = ceil(N / sp) sp when sp does not divide
N; c_v, c_a the video and audio shard lengths, c = min(c_v, c_a) the shorter one):

| attention | collective | bytes this rank sends | 704x704x121, sp=2 |
| --- | --- | --- | --- |
| video self-attention | 3 all-to-alls in (q, k, v), 1 out | 4 c_v Np d (sp-1)/sp b | 92 MB |
| audio self-attention | the same on the audio shard | 4 c_a Np d (sp-1)/sp b | 1.0 MB |
| text cross-attention (both) | none: the text rows are on every rank | 0 | 0 |
| long queries -> short keys (video -> audio) | all-gather of the k, v shards | 2 c D (sp-1) b | 1.0 MB |
| short queries -> long keys (audio -> video) | all-gather of the q shard; all-reduce of the fp32 softmax max, sum and values (`ShardedKVAttention`) | c D (sp-1) b + (2N + D) sp c 4 x 2(sp-1)/sp | 0.5 + 2.0 MB |

The video self-attention's all-to-alls are nearly all of it: per rank per step 5.8 GB at sp 2,
4.5 GB at sp 4, 2.8 GB at sp 8 (`volume.step_volume`). Gathering the whole video k/v for the
audio queries instead would cost each rank about 2 Lv D b = 184 MB more per layer, whatever sp. Per
step add the heads' gather (c_v x 192 + c_a x 20 fp32 values to each other rank) and, with
CFG-parallel, the predictions' exchange (Lv x 192 + La x 20 fp32 values); `python -m bench`
prints the per-step totals for 2, 4 and 8 ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..options import RuntimeOptions
from .fusion import ParallelFusion, sequence_parallel_forward
from .groups import ParallelState
from .launch import RankFailed, launch

__all__ = [
    "ParallelFusion",
    "ParallelRuntime",
    "ParallelState",
    "RankFailed",
    "launch",
    "sequence_parallel_forward",
]


class ParallelRuntime:
    """What `OviPipeline` asks of the ranks: the fusion stand-in, the shared seed, the split
    decode. `pipe.parallel` holds one (None in a single process)."""

    def __init__(self, state: ParallelState) -> None:
        if not state.member:
            raise ValueError("this rank is not part of the layout")
        self.state = state

    @classmethod
    def from_options(cls, runtime: RuntimeOptions) -> ParallelRuntime | None:
        """The layout `runtime` asks for over the whole (already started) process group; None
        for one process."""
        if runtime.parallel_size == 1:
            return None
        return cls(ParallelState.create(2 if runtime.cfg_parallel else 1, runtime.sp_degree))

    @property
    def is_main(self) -> bool:
        """Rank 0 of the layout: the one that writes files and talks to the job store."""
        return self.state.rank == 0

    def wrap(self, fusion: Any) -> ParallelFusion:
        return ParallelFusion(fusion, self.state)

    def shared_seed(self, seed: int) -> int:
        """Rank 0's seed on every rank (a seed drawn at random differs per process)."""
        group = self.state.group
        value = torch.tensor([seed], dtype=torch.int64)
        if dist.get_backend(group) == "nccl":
            value = value.cuda()
        dist.broadcast(value, src=dist.get_global_rank(group, 0), group=group)
        return int(value.item())

    def decode_video(self, video_vae: Any, latent: torch.Tensor) -> torch.Tensor:
        """`video_vae.decode(latent)` with the rows split over every rank of the layout."""
        from .vae import decode_video  # diffusers: imported only where a VAE runs

        return decode_video(video_vae, latent, self.state.group)
