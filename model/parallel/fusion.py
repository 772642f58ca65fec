"""The fusion DiT on `cfg x sp` ranks: what `denoise` calls instead of the model.

`ParallelFusion.forward_cfg` has the signature of `FusionModel.forward_cfg` (the pipeline runs
`denoise(..., batch_cfg=True)` on it): with CFG-parallel each pass runs on its own half of the
ranks and the two results are exchanged; with `sp > 1` each pass is `sequence_parallel_forward`.
Every rank ends with the same four outputs, so the solver steps (replicated, cheap) keep every
rank's latents identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..modules.fusion import Context, FusionModel, TowerInputs, _skipped
from .attention import GatheredKVAttention, ShardedKVAttention, UlyssesAttention
from .comm import gather_seq, group_rank, group_size
from .groups import ParallelState, shard

Tensor = torch.Tensor


def shard_tower(inputs: TowerInputs, group: Any, per_token: bool) -> TowerInputs:
    """This rank's token shard of a tower's inputs: tokens x, RoPE tables, the per-token time
    index (and e/e0 when they are per token); text and time rows stay whole."""
    sp, me = group_size(group), group_rank(group)
    cos, sin = (shard(r, 0, sp, me) for r in inputs.rope)  # [c, d/2]; padding rows unused
    changes: dict[str, Any] = {"x": shard(inputs.x, 1, sp, me), "rope": (cos, sin)}
    if inputs.index is not None:
        changes["index"] = shard(inputs.index, 0, sp, me)  # [c]
    if per_token:
        changes["e"] = shard(inputs.e, 1, sp, me)  # [B, c, D]
        changes["e0"] = shard(inputs.e0, 1, sp, me)  # [B, c, 6, D]
    return inputs._replace(**changes)


def fusion_attention(group: Any, queries: int, keys: int) -> Any:
    """The cheaper exact fusion attention: move the shorter side. Long queries (video, 15004
    tokens at 704x704) gather the short keys (audio, 157); short queries gather themselves and
    attend to the long keys where they are."""
    return ShardedKVAttention(group, keys) if queries <= keys else GatheredKVAttention(group, keys)


def sequence_parallel_forward(
    model: FusionModel,
    group: Any,
    video: Tensor,
    audio: Tensor,
    t: Tensor,
    context: Context,
    first_frame_is_clean: bool = False,
    slg_layer: int | bool | None = None,
) -> tuple[Tensor, Tensor]:
    """`FusionModel.forward` with each tower's tokens split over the ranks of `group`.

    Same inputs and outputs (every rank passes the whole latents and gets the whole
    predictions). Embedding and the time MLPs run whole on every rank (cheap); the blocks run on
    this rank's shard with Ulysses self-attention and gathered fusion keys/values; the heads run
    on the shard and their outputs are gathered."""
    model._check_inputs(video, audio, t, context)
    if model.offload is not None:
        raise ValueError("sequence parallelism does not combine with --block-offload")
    t = t.reshape(-1).to(video.device).expand(video.shape[0])  # [B]
    dtype, per_token = model.dtype, model.time_per_token
    # 1.-2. embeddings, whole, then this rank's shard of each tower
    vid = model.video_model.embed_latents(video, t, first_frame_is_clean, per_token, dtype=dtype)
    aud = model.audio_model.embed_latents(audio, t, time_per_token=per_token, dtype=dtype)
    vid = vid._replace(context=model.video_model.embed_context(context[0], dtype))
    aud = aud._replace(context=model.audio_model.embed_context(context[1], dtype))
    lv, la = vid.x.shape[1], aud.x.shape[1]
    vid, aud = shard_tower(vid, group, per_token), shard_tower(aud, group, per_token)

    # 3. blocks on the shards; each attention over the whole sequence through `attend`
    video_blocks, audio_blocks = model.video_model.blocks, model.audio_model.blocks
    attends = {
        "video_self": UlyssesAttention(group, lv),
        "audio_self": UlyssesAttention(group, la),
        "video_fusion": fusion_attention(group, lv, la),  # video queries, audio keys
        "audio_fusion": fusion_attention(group, la, lv),  # audio queries, video keys
    }
    for vb, ab in zip(video_blocks, audio_blocks, strict=True):
        vb.self_attn.attend, ab.self_attn.attend = attends["video_self"], attends["audio_self"]
        vb.cross_attn.attend = attends["video_fusion"]
        ab.cross_attn.attend = attends["audio_fusion"]
    try:
        v, a = vid.x, aud.x  # [B, cv, Dv], [B, ca, Da] fp32
        for i in range(len(video_blocks)):
            if not _skipped(i, slg_layer):
                v, a = model.layer_fn(video_blocks[i], audio_blocks[i], v, a, vid, aud)
    finally:
        for block in (*video_blocks, *audio_blocks):
            block.self_attn.attend = block.cross_attn.attend = None

    # 4. heads on the shards, gathered and unpadded
    video_out = gather_seq(model.video_model.head(v, vid), lv, group)  # [B, Lv, prod(patch) C]
    audio_out = gather_seq(model.audio_model.head(a, aud), la, group)  # [B, La, Ca]
    return model.video_model.unpatchify(video_out, vid.grid), audio_out


class ParallelFusion:
    """Stands in for the `FusionModel` in `denoise` (called with `batch_cfg=True`)."""

    def __init__(self, model: FusionModel, state: ParallelState) -> None:
        self.model = model
        self.state = state

    def _pass(
        self, video: Tensor, audio: Tensor, t: Tensor, context: Context, ffc: bool, slg: Any
    ) -> tuple[Tensor, Tensor]:
        if self.state.sp == 1:
            return self.model(video, audio, t, *context, first_frame_is_clean=ffc, slg_layer=slg)
        return sequence_parallel_forward(
            self.model, self.state.sp_group, video, audio, t, context, ffc, slg
        )

    def forward_cfg(
        self,
        video: Tensor,
        audio: Tensor,
        t: Tensor,
        context_pos: Context,
        context_neg: Context,
        first_frame_is_clean: bool = False,
        slg_layer: int | bool | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(video_pos, audio_pos, video_neg, audio_neg), as `FusionModel.forward_cfg`: the
        negative pass skips block `slg_layer`."""
        if self.state.cfg == 1:
            pos = self._pass(video, audio, t, context_pos, first_frame_is_clean, None)
            neg = self._pass(video, audio, t, context_neg, first_frame_is_clean, slg_layer)
            return (*pos, *neg)
        negative = self.state.cfg_rank == 1
        mine = self._pass(
            video,
            audio,
            t,
            context_neg if negative else context_pos,
            first_frame_is_clean,
            slg_layer if negative else None,
        )
        # exchange: [pos, neg] of each output on both ranks of this shard's CFG pair
        out = []
        for x in mine:
            pair = [torch.empty_like(x) for _ in range(2)]
            dist.all_gather(pair, x.contiguous(), group=self.state.cfg_group)
            out.append(pair)
        (pos_v, neg_v), (pos_a, neg_a) = out
        return pos_v, pos_a, neg_v, neg_a
