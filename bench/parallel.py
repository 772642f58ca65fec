"""The `parallel` section of `python -m bench`: one clip on several GPUs (model/parallel).

Always (any machine, `--small` too): the communication volume per denoising step at the full
shape 704x704x121 for 2, 4 and 8 ranks (SP alone and CFG x SP), from the shapes
(`model.parallel.volume.step_volume`), and an ESTIMATED step time: the one-GPU compute split
evenly plus the busiest rank's bytes at an assumed link rate. Both assumptions are printed; a
multi-GPU machine's measurement replaces them.

With more than one GPU visible (and not `--small`): measured. One denoising step's two guidance
passes of the full-size fusion DiT (random bf16 weights) on each layout that fits the GPUs,
`model.parallel.launch` with NCCL, median of `runs` after a warm-up, against the same code on
one GPU.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from model.config import FusionConfig
from model.parallel.volume import step_volume

from .flops import Shape, step_flops

SHAPE = Shape(704, 704, 121, 157)
RANKS = (2, 4, 8)
ASSUMED_LINK_GBPS = 300.0  # per-GPU all-to-all rate over NVLink (an assumption, not measured)
ASSUMED_TFLOPS = 400.0  # sustained bf16 rate of the DiT on one Hopper GPU (assumption)


def layouts(ranks: int) -> list[tuple[int, int]]:
    """(cfg, sp) layouts of `ranks` GPUs: SP alone, and CFG x SP."""
    out = [(1, ranks)]
    if ranks % 2 == 0:
        out.append((2, ranks // 2))
    return out


def estimates(config: FusionConfig, shape: Shape = SHAPE) -> list[dict[str, Any]]:
    """Bytes per step and the estimated step time and speed-up for each layout of RANKS."""
    lv, la = shape.video_tokens(config.video), shape.audio_tokens
    one_ms = step_flops(config, shape) / (ASSUMED_TFLOPS * 1e12) * 1e3
    rows = []
    for ranks in RANKS:
        for cfg, sp in layouts(ranks):
            vol = step_volume(config, lv, la, cfg=cfg, sp=sp)
            comm_ms = vol.per_rank_bytes / (ASSUMED_LINK_GBPS * 1e9) * 1e3
            step_ms = one_ms / ranks + comm_ms  # no overlap of compute and communication
            rows.append(
                {
                    "ranks": ranks,
                    "cfg": cfg,
                    "sp": sp,
                    "per_rank_gb_per_step": vol.per_rank_bytes / 1e9,
                    "total_gb_per_step": vol.total_bytes / 1e9,
                    "est_comm_ms": comm_ms,
                    "est_step_ms": step_ms,
                    "est_one_gpu_step_ms": one_ms,
                    "est_speedup": one_ms / step_ms,
                }
            )
    return rows


def _time_layout(
    cfg: int, sp: int, config: FusionConfig, shape: Shape, runs: int, device: Any = None
) -> float | None:
    """One rank: the median ms of one step's two passes on the (cfg, sp) layout."""
    import torch.distributed as dist

    from model.parallel import ParallelFusion, ParallelState

    from .build import random_fusion

    state = ParallelState.create(cfg, sp)
    model = random_fusion(config, device, torch.bfloat16, seed=0)  # same weights on every rank
    gen = torch.Generator(device="cpu").manual_seed(0)
    f, h, w = shape.latent_frames, shape.height // 16, shape.width // 16
    video = torch.randn(1, config.video.in_dim, f, h, w, generator=gen).to(device, torch.bfloat16)
    audio = torch.randn(1, shape.audio_tokens, config.audio.in_dim, generator=gen)
    audio = audio.to(device, torch.bfloat16)
    text = torch.randn(1, 64, config.video.text_dim, generator=gen).to(device, torch.bfloat16)
    t = torch.tensor([500.0], device=device)
    fusion = ParallelFusion(model, state)
    times = []
    with torch.no_grad():
        for i in range(runs + 1):  # the first is the warm-up
            dist.barrier()
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            fusion.forward_cfg(video, audio, t, (text, text), (text, text), True, 11)
            torch.cuda.synchronize(device)
            if i:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times) if state.rank == 0 else None


def measure(config: FusionConfig, runs: int, shape: Shape = SHAPE) -> dict[str, float]:
    """step ms per layout on the visible GPUs (`layout_<cfg>x<sp>_step_ms`), 1x1 included."""
    from model.parallel import launch

    gpus = torch.cuda.device_count()
    figures = {}
    for ranks in (1, *(r for r in RANKS if r <= gpus)):
        for cfg, sp in layouts(ranks) if ranks > 1 else [(1, 1)]:
            figures[f"layout_{cfg}x{sp}_step_ms"] = launch(
                _time_layout,
                (cfg, sp, config, shape, runs),
                world_size=ranks,
                gpus=list(range(ranks)),
                timeout=1800,
            )
    return figures


def run_section(bench: Any) -> None:
    """What `Bench.run_parallel` does: estimates always, measurements with > 1 GPU."""
    config = bench.full_config.fusion
    rows = estimates(config)
    result: dict[str, Any] = {
        "shape": SHAPE.label,
        "assumed_link_gb_per_s": ASSUMED_LINK_GBPS,
        "assumed_bf16_tflops": ASSUMED_TFLOPS,
        "estimates": rows,
    }
    bench.say(
        f"parallel (ESTIMATE at {SHAPE.label}: bytes from the shapes; time at an assumed"
        f" {ASSUMED_LINK_GBPS:.0f} GB/s per GPU and {ASSUMED_TFLOPS:.0f} TFLOP/s, no overlap)"
    )
    for row in rows:
        bench.say(
            f"  {row['ranks']} ranks cfg {row['cfg']} x sp {row['sp']}:"
            f" {row['per_rank_gb_per_step']:.2f} GB/step per rank"
            f" ({row['total_gb_per_step']:.1f} GB all ranks), est. comm {row['est_comm_ms']:.0f} ms,"
            f" est. step {row['est_step_ms']:.0f} ms vs {row['est_one_gpu_step_ms']:.0f} ms on"
            f" one GPU: est. {row['est_speedup']:.2f}x"
        )
    if bench.cuda and torch.cuda.device_count() > 1:
        result["measured"] = measure(config, bench.clock.runs)
        for key, value in result["measured"].items():
            bench.say(f"  measured {key}: {value:.1f}")
    else:
        result["measured"] = None
        result["measured_note"] = "needs more than one visible GPU (and not --small)"
    bench.extra["parallel"] = result
