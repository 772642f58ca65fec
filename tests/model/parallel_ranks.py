"""What each gloo rank runs in `test_parallel.py` (a module the spawned processes import).

One set of 4 processes tries every layout: every rank creates every layout's groups (in the
same order), members run the clip, the others go on to the next layout.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from model.modules.attention import attention
from model.parallel import ParallelRuntime, ParallelState
from model.parallel.attention import GatheredKVAttention, ShardedKVAttention, UlyssesAttention
from model.parallel.comm import gather_seq
from model.parallel.groups import shard
from model.pipeline import OviPipeline

LAYOUTS = {  # name: (cfg, sp, ranks)
    "cfg2": (2, 1, [0, 1]),
    "sp2": (1, 2, [0, 1]),
    "sp3": (1, 3, [0, 1, 2]),
    "cfg2xsp2": (2, 2, [0, 1, 2, 3]),
}


def rel_l2(a: Any, b: Any) -> float:
    a, b = (torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in (a, b))
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _attention_checks(state: ParallelState) -> dict[str, Any]:
    """Ulysses and gathered-KV attention on shards vs `attention` on the whole sequence."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 37, 2, 32, generator=gen) for _ in range(3))  # L=37: uneven
    ko, vo = (torch.randn(1, 11, 2, 32, generator=gen) for _ in range(2))
    group, sp, me = state.sp_group, state.sp, state.sp_rank
    local = [shard(x, 1, sp, me) for x in (q, k, v)]
    ulysses = gather_seq(UlyssesAttention(group, 37)(*local), 37, group)
    gathered = gather_seq(
        GatheredKVAttention(group, 11)(local[0], shard(ko, 1, sp, me), shard(vo, 1, sp, me)),
        37,
        group,
    )
    # short queries (11) against the long sharded keys (37): the partial softmax merge
    sharded = gather_seq(
        ShardedKVAttention(group, 37)(shard(ko, 1, sp, me), local[1], local[2]), 11, group
    )
    whole, whole_o, whole_s = attention(q, k, v), attention(q, ko, vo), attention(ko, k, v)
    return {
        "ulysses_equal": bool(torch.equal(ulysses, whole)),
        "ulysses_max_abs": float((ulysses - whole).abs().max()),
        "gathered_equal": bool(torch.equal(gathered, whole_o)),
        "gathered_max_abs": float((gathered - whole_o).abs().max()),
        "sharded_rel_l2": rel_l2(sharded, whole_s),
    }


def _run(pipe: OviPipeline, image: Image.Image) -> dict[str, Any]:
    """One clip; the final latents are caught on their way into `decode`."""
    seen: dict[str, Any] = {}
    decode = pipe.decode

    def catch(video: torch.Tensor, audio: torch.Tensor, *rest: Any) -> Any:
        seen["latent_video"], seen["latent_audio"] = video.clone(), audio.clone()
        return decode(video, audio, *rest)

    pipe.decode = catch  # type: ignore[method-assign]
    try:
        out = pipe("A dog barks. Audio: a bark", image, steps=2, seed=11)
    finally:
        del pipe.decode
    seen.update(video=out.video, audio=out.audio, seed=out.seed)
    return seen


def equality_checks(device: Any = None) -> dict[str, Any]:
    """Run on 4 ranks; rank 0 returns {layout: {name: rel L2 or bool}}."""
    rank = dist.get_rank()
    clock = time.perf_counter()
    states = {name: ParallelState.create(c, s, r) for name, (c, s, r) in LAYOUTS.items()}
    pipe = OviPipeline.from_preset("tiny_1s")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    reference = None
    if rank == 0:
        reference = _run(pipe, image)
        with torch.no_grad():
            reference["pixels"] = pipe.video_vae.decode(reference["latent_video"])
    report: dict[str, Any] = {"build_and_reference_s": time.perf_counter() - clock}
    for name, state in states.items():
        if not state.member:
            continue
        entry = _attention_checks(state) if state.sp > 1 else {}
        pipe.parallel = ParallelRuntime(state)
        started = time.perf_counter()
        got = _run(pipe, image)
        entry["seconds"] = time.perf_counter() - started
        with torch.no_grad():  # the decoded pixels before the uint8 rounding
            pixels = pipe.parallel.decode_video(pipe.video_vae, got["latent_video"])
        pipe.parallel = None
        if rank == 0:
            for key in ("latent_video", "latent_audio", "pixels", "audio"):
                entry[key] = rel_l2(pixels if key == "pixels" else got[key], reference[key])
            frames = np.abs(got["video"].astype(int) - reference["video"].astype(int))
            entry["frames_max_diff"] = int(frames.max())
            entry["frames_share_diff"] = float((frames > 0).mean())
            entry["frames_rel_l2"] = rel_l2(got["video"], reference["video"])
            entry["seed"] = got["seed"] == reference["seed"]
        report[name] = entry
    # the row-split VAE decode alone, 4 ranks, the reference latents
    latent = torch.zeros(1, 48, 7, 4, 4)
    if rank == 0:
        latent = reference["latent_video"].contiguous()
    dist.broadcast(latent, src=0)
    state = states["cfg2xsp2"]
    with torch.no_grad():
        split = ParallelRuntime(state).decode_video(pipe.video_vae, latent)
        whole = pipe.video_vae.decode(latent)
    report["vae_split4"] = {
        "pixels": rel_l2(split, whole),
        "equal": bool(torch.equal(split, whole)),
    }
    return report
