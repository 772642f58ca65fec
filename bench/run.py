"""`python -m bench`: speed, memory and error figures of Ovi, fast path against reference style.

On CUDA: the full-size model of a variant with random bf16 weights (no download), timed with CUDA
events after warm-up (median of `--runs`), MFU against a bf16 matmul peak measured in the same
run, peak memory from `torch.cuda.max_memory_allocated`. `--small`: the same code at the tiny_1s
preset's size on the CPU in seconds (wall-clock timers; MFU and memory fields null), so CI checks
that the script works. Writes one JSON (`--out`) holding every key of `FIGURE_KEYS` (null where
a figure was not measured, with the reason under "notes"). See `bench/README.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from model import optimize as opt
from model.modules import attention as attn
from model.modules.fusion import FusionModel, fusion_layer
from model.modules.video_vae import to_uint8
from model.options import RuntimeOptions
from model.pipeline import OviPipeline
from model.presets import get_preset
from model.schedulers import make_scheduler

from . import sections
from .build import build_audio, build_text_encoder, build_video_vaes, random_fusion
from .flops import Shape, forward_flops, step_flops
from .memory import estimate_memory
from .parallel import run_section as run_parallel_section

logger = logging.getLogger("bench")

LABELS = ("704x704x121", "960x960x121", "960x960x241")
FULL_SHAPES = {
    "704x704x121": Shape(704, 704, 121, 157),
    "960x960x121": Shape(960, 960, 121, 157),
    "960x960x241": Shape(960, 960, 241, 314),
}
SMALL_SHAPES = {  # the tiny_1s preset's area and lengths (25 frames; 49 for the long shape)
    "704x704x121": Shape(64, 64, 25, 33),
    "960x960x121": Shape(96, 96, 25, 33),
    "960x960x241": Shape(96, 96, 49, 64),
}
MAIN = LABELS[0]  # the shape of the headline figures (offload, fp8, batched CFG, pipeline)
PROMPTS = (
    "A woman speaks to the camera in a sunlit kitchen. Audio: <S>Good morning!<E>",
    "jitter, bad hands, blur, distortion",
    "robotic, muffled, echo, distorted",
)
PIPELINE_STEPS = (50, 30)
# the official release's README: one 720x720x121 clip, 50 steps, end to end (printed beside ours)
OFFICIAL_README_S = {"fa3": 83.0, "fa2": 96.0}
ESTIMATE_NOTE = (
    "estimate at full size on the meta device: live tensor bytes, attention as a flash kernel;"
    " excludes allocator rounding/fragmentation and kernel workspaces (a floor under"
    " max_memory_allocated)"
)


def _shape_keys(label: str) -> list[str]:
    return [
        f"flop_per_forward_{label}_tflop",
        f"flop_per_forward_{label}_reference_style_tflop",
        f"step_{label}_ours_ms",
        f"step_{label}_reference_ms",
        f"step_{label}_speedup",
        f"step_{label}_ours_tflops",
        f"step_{label}_reference_tflops",
        f"step_{label}_ours_mfu",
        f"step_{label}_reference_mfu",
        f"step_{label}_ours_peak_mem_gib",
        f"step_{label}_reference_peak_mem_gib",
        f"step_{label}_rel_err_video",
        f"step_{label}_rel_err_audio",
    ]


# The exact gains timed on vs off at the main shape (`Bench.run_variants`, `FastPath` fields):
# shared first-layer work sequential and batched, the clip-cached fp32 time weights, the fused
# GELU (compiled and eager), the per-shape attention choice, CUDA graphs (reduce-overhead).
# In this order: the ones that need no new compiled graph first (a lease's budget may end the
# section during a later one's compile).
GAINS = (
    "share_first_layer",
    "share_first_layer_batched",
    "fp32_weight_cache",
    "attention_by_shape",
    "fused_gelu",
    "fused_gelu_eager",
    "cuda_graphs",
)


# The Wan VAE decoder's exact switches timed against the default decode (`Bench._vae_switches`,
# `FastPath.vae_channels_last` and `vae_compile`).
VAE_SWITCHES = ("channels_last", "compiled")


def vae_switch_keys(switch: str) -> list[str]:
    """A decoder switch's figures: its decode time, the speed-up, the max 8-bit difference."""
    return [f"vae_decode_{switch}_ms", f"vae_{switch}_speedup", f"vae_{switch}_pixel_err_max"]


def gain_keys(gain: str) -> list[str]:
    """A gain's figures: its step on and off, the speed-up, and the error with it on."""
    step = f"step_{MAIN}"
    figures = ("speedup", "rel_err_video", "rel_err_audio")
    return [f"{step}_{gain}_ms", f"{step}_no_{gain}_ms", *(f"{gain}_{k}" for k in figures)]


VARIANT_KEYS = (  # at the main shape
    "recompiles_second_request",
    "host_syncs_per_step_fusion",
    "host_syncs_per_step_scheduler",
    f"step_{MAIN}_batched_cfg_ms",
    "batched_cfg_speedup",
    "batched_cfg_rel_err_video",
    "batched_cfg_rel_err_audio",
    "batched_cfg_peak_mem_gib",
    f"step_{MAIN}_offload_ms",
    "offload_peak_mem_gib",
    "offload_rel_err_video",
    "offload_rel_err_audio",
    f"step_{MAIN}_fp8_ms",
    "fp8_speedup",
    "fp8_rel_err_video",
    "fp8_rel_err_audio",
    *(key for gain in GAINS for key in gain_keys(gain)),
)
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "matmul": ("matmul_peak_tflops",),
    "dit": (*(k for label in LABELS for k in _shape_keys(label)[2:]), "compile_first_step_s"),
    "variants": VARIANT_KEYS,
    "t5": ("t5_3_prompts_ms", "t5_peak_mem_gib"),
    "vae": (
        "vae_encode_image_ms",
        "vae_decode_fp32_ms",
        "vae_decode_ms",
        "vae_decode_peak_mem_gib",
        "vae_decode_rel_err",
        "vae_decode_pixel_err_max",
        "vae_decode_pixel_err_mean",
        "vae_decode_whole_ms",
        "vae_decode_whole_peak_mem_gib",
        "vae_decode_stock_bf16_ms",
        "vae_decode_stock_bf16_rel_err",
        "vae_decode_stock_bf16_pixel_err_max",
        "vae_decode_tiled_ms",
        "vae_decode_tiled_peak_mem_gib",
        "vae_decode_tiled_pixel_err_max",
        *(key for switch in VAE_SWITCHES for key in vae_switch_keys(switch)),
    ),
    "audio": ("audio_decode_ms",),
    "totals": ("pipeline_50_steps_composed_s", "pipeline_30_steps_composed_s"),
    "pipeline": ("pipeline_50_steps_s", "pipeline_30_steps_s", "pipeline_peak_mem_gib"),
    "parallel": (),  # bench/parallel.py: its figures go under extra["parallel"]
    "memory": (  # estimates at full size on the meta device (bench/memory.py), any machine
        "est_weights_fusion_gib",
        "est_weights_fusion_fp8_gib",
        "est_weights_text_encoder_gib",
        "est_weights_video_vae_gib",
        "est_weights_audio_vae_gib",
        "est_weights_vocoder_gib",
        *(f"est_step_{label}_ours_act_gib" for label in LABELS),
        f"est_step_{MAIN}_batched_cfg_act_gib",
        f"est_step_{MAIN}_reference_act_gib",
        f"est_step_{MAIN}_fp8_act_gib",
        f"est_step_{MAIN}_unshared_act_gib",
        "est_text_kv_cache_gib",
        "est_t5_act_gib",
        "est_vae_encode_image_act_gib",
        "est_vae_decode_act_gib",
        "est_vae_decode_fast_act_gib",
        "est_vae_decode_stock_act_gib",
        "est_audio_decode_act_gib",
        "est_pipeline_peak_gib",
        "est_pipeline_peak_text_encoder_offload_gib",
        "est_pipeline_peak_default_40gb_gib",
        "est_pipeline_peak_cpu_offload_gib",
        "est_pipeline_peak_block_offload_gib",
    ),
}
FLOP_KEYS = tuple(k for label in LABELS for k in _shape_keys(label)[:2])  # analytical, always
SECTION_KEYS["profile"] = ()  # a kernel table beside the JSON (`<out>.kernels.txt`), extra
# The built-in sections in the default plan's order (`--plan full`); see `register_builtins`.
BUILTIN_SECTIONS = (
    "matmul", "dit", "profile", "variants", "t5", "vae", "audio", "totals", "pipeline", "memory",
    "parallel",
)  # fmt: skip
# Plans: (sections in order of value, shapes). `lease` is the one GPU command of at most 8
# minutes (bench/gpu-lease.sh); `lease-960` the second one, for the 960x960 shapes.
PLANS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "full": (BUILTIN_SECTIONS, LABELS),
    "lease": (
        (
            "matmul",
            "dit",
            "vae",
            "t5",
            "audio",
            "totals",
            "memory",
            "profile",
            "variants",
            "pipeline",
            "parallel",
        ),
        (MAIN,),
    ),  # fmt: skip
    "lease-960": (("matmul", "dit", "profile"), ("960x960x121", "960x960x241")),
}


def figure_keys() -> tuple[str, ...]:
    """Every figure key: the analytical FLOP counts, then each registered section's keys."""
    keys = [*FLOP_KEYS]
    for sec in sections.registered().values():
        keys += [k for k in sec.keys if k not in keys]
    return tuple(keys)


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


class Clock:
    """CUDA events on a GPU (synchronised after each run), perf_counter on the CPU."""

    def __init__(self, device: torch.device, runs: int, warmup: int) -> None:
        self.device, self.runs, self.warmup = device, runs, warmup
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """(milliseconds, result) of one call."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1e3, out

    def median(self, fn: Callable[[], Any], runs: int | None = None) -> tuple[float, Any]:
        """(median milliseconds over `runs` after `warmup` calls, last result)."""
        out = None
        for _ in range(self.warmup):
            out = fn()
        self.sync()
        times = []
        for _ in range(runs or self.runs):
            ms, out = self.once(fn)
            times.append(ms)
        return statistics.median(times), out

    @contextlib.contextmanager
    def peak_memory(self, into: dict[str, float | None], key: str) -> Iterator[None]:
        """Peak allocated GiB inside the block (weights resident at entry included)."""
        if not self.cuda:
            yield
            into[key] = None
            return
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        self.sync()
        into[key] = torch.cuda.max_memory_allocated(self.device) / 2**30


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))


def matmul_peak_tflops(device: torch.device, clock: Clock, n: int = 8192) -> float:
    """bf16 GEMM rate: n x n x n products over 4 rotating random input sets, median."""
    gen = torch.Generator(device=device).manual_seed(0)
    sets = [
        (
            torch.randn(n, n, generator=gen, device=device, dtype=torch.bfloat16),
            torch.randn(n, n, generator=gen, device=device, dtype=torch.bfloat16),
        )
        for _ in range(4)
    ]
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    reps = 10

    def loop() -> None:
        for i in range(reps):
            a, b = sets[i % len(sets)]
            torch.mm(a, b, out=out)

    ms, _ = clock.median(loop, runs=max(clock.runs, 5))
    return 2 * n**3 * reps / (ms / 1e3) / 1e12


def time_attention_backends(
    config: Any, shape: Shape, clock: Clock
) -> dict[str, dict[str, float | str]]:
    """Milliseconds of each SDPA backend (and FA3) on the step's attention shapes: video
    self-attention, video->text, video->audio, audio->video (the per-shape choice follows)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    v = config.video
    lv, la, lt = shape.video_tokens(v), shape.audio_tokens, v.text_len
    cases = {
        f"self {lv}x{lv}": (lv, lv),
        f"text {lv}x{lt}": (lv, lt),
        f"fusion {lv}x{la}": (lv, la),
        f"fusion {la}x{lv}": (la, lv),
    }
    gen = torch.Generator(device=clock.device).manual_seed(0)

    def qkv(lq: int, lk: int) -> list[torch.Tensor]:  # [1, L, N, d] bf16
        return [
            torch.randn(1, n, v.num_heads, v.head_dim, generator=gen, device=clock.device).to(
                torch.bfloat16
            )
            for n in (lq, lk, lk)
        ]

    backends: dict[str, Callable[..., Any]] = {}
    for b in (
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
    ):

        def run(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, b: Any = b) -> torch.Tensor:
            with sdpa_kernel([b]):
                return torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), w.transpose(1, 2)
                )

        backends[b.name] = run
    if attn.fa3_available():

        def fa3(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            saved = attn.forced_backend()
            attn.force_backend("fa3")
            try:
                return attn.attention(q, k, w)
            finally:
                attn.force_backend(saved)

        backends["FA3"] = fa3
    table: dict[str, dict[str, float | str]] = {}
    for name, fn in backends.items():
        table[name] = {}
        for case, (lq, lk) in cases.items():
            args = qkv(lq, lk)
            try:
                table[name][case], _ = clock.median(lambda fn=fn, args=args: fn(*args))
            except RuntimeError as err:
                table[name][case] = f"unsupported: {str(err).splitlines()[0][:120]}"
    return table


def count_host_syncs(fn: Callable[[], Any]) -> int:
    """Synchronising CUDA calls made by `fn` (torch's sync debug mode, as warnings)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen)


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.small = args.small
        self.cuda = torch.cuda.is_available() and not args.small
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16
        self.preset = get_preset("tiny_1s" if self.small else args.variant)
        self.config = self.preset.config
        self.full_config = get_preset(args.variant).config
        self.shapes = SMALL_SHAPES if self.small else FULL_SHAPES
        # --small checks that the code runs: one timed call, no warm-up (CPU, eager kernels)
        runs = args.runs or (1 if self.small else 3 if args.plan.startswith("lease") else 5)
        self.clock = Clock(self.device, runs=runs, warmup=0 if self.small else 1)
        self.compile_backend = args.compile_backend or ("eager" if self.small else "inductor")
        self.keys = figure_keys()
        self.figures: dict[str, float | int | None] = dict.fromkeys(self.keys)
        self.out: Path | None = args.out
        self.status: dict[str, dict[str, Any]] = {}  # per section: status, wall_s, error/reason
        self.notes: dict[str, str] = {}
        self.extra: dict[str, Any] = {}
        self.fusion: FusionModel | None = None
        self.peak: float | None = None
        self.step_inputs: dict[str, dict[str, torch.Tensor]] = {}
        self.main_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.text_encoder = self.video_vae = self.audio_vae = self.vocoder = None
        self._clip: contextlib.ExitStack | None = None  # the fusion model's clip scope (`step`)

    # --- helpers ------------------------------------------------------------------------------

    def note(self, keys: list[str] | str, text: str) -> None:
        for key in [keys] if isinstance(keys, str) else keys:
            self.notes[key] = text

    def say(self, text: str) -> None:
        print(text, flush=True)

    def mfu(self, flops: float, ms: float) -> float | None:
        return None if self.peak is None else flops / (ms / 1e3) / (self.peak * 1e12)

    def inputs(self, label: str) -> dict[str, torch.Tensor]:
        """Random latents and text for one step at `label` (fixed seed per shape)."""
        if label not in self.step_inputs:
            shape, cfg = self.shapes[label], self.config.fusion
            g = torch.Generator().manual_seed(1234)
            dev, dt_ = self.device, self.dtype

            def text(rows: int) -> torch.Tensor:  # T5-like rows, at most text_len of them
                rows = min(rows, cfg.video.text_len)
                return (0.2 * torch.randn(1, rows, cfg.video.text_dim, generator=g)).to(dev, dt_)

            self.step_inputs[label] = dict(
                video=torch.randn(
                    1, cfg.video.in_dim, shape.latent_frames, shape.height // 16,
                    shape.width // 16, generator=g,
                ).to(dev, dt_),
                audio=torch.randn(1, shape.audio_tokens, cfg.audio.in_dim, generator=g).to(dev, dt_),
                t=torch.tensor([903], device=dev),
                text_pos=text(117), text_vneg=text(14), text_aneg=text(12),
            )  # fmt: skip
        return self.step_inputs[label]

    def step(self, label: str, batch_cfg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step's model work: both CFG passes + the guidance combination, inside
        one clip scope held across steps (as the pipeline's loop: the clip cache is warm)."""
        x, fusion = self.inputs(label), self.fusion
        if self._clip is None:
            self._clip = contextlib.ExitStack()
            self._clip.enter_context(fusion.clip())
        slg = self.preset.sampling.slg_layer
        with torch.no_grad():
            if batch_cfg:
                pv, pa, nv, na = fusion.forward_cfg(
                    x["video"], x["audio"], x["t"], (x["text_pos"], x["text_pos"]),
                    (x["text_vneg"], x["text_aneg"]), slg_layer=slg,
                )  # fmt: skip
            else:
                pv, pa = fusion(x["video"], x["audio"], x["t"], x["text_pos"], x["text_pos"])
                nv, na = fusion(
                    x["video"], x["audio"], x["t"], x["text_vneg"], x["text_aneg"], slg_layer=slg
                )
        s = self.preset.sampling
        return nv + s.video_guidance_scale * (pv - nv), na + s.audio_guidance_scale * (pa - na)

    def end_clip(self) -> None:
        """Leave the clip scope (its cache emptied): before the weights change, and between
        sections."""
        if self._clip is not None:
            self._clip.close()
            self._clip = None

    def free(self) -> None:
        self.end_clip()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # --- sections -----------------------------------------------------------------------------

    def run_matmul(self) -> None:
        if not self.cuda:
            self.note("matmul_peak_tflops", "CUDA only")
            return
        self.peak = matmul_peak_tflops(self.device, self.clock)
        self.figures["matmul_peak_tflops"] = self.peak
        self.say(f"bf16 matmul peak (measured, 8192^3): {self.peak:.1f} TFLOP/s")

    def run_flops(self) -> None:
        cfg = self.full_config.fusion
        for label, shape in FULL_SHAPES.items():
            nv = shape.video_tokens(cfg.video)
            ours = forward_flops(cfg, nv, shape.audio_tokens)
            ref = forward_flops(cfg, nv, shape.audio_tokens, per_token_time=True)
            self.figures[f"flop_per_forward_{label}_tflop"] = ours["total"] / 1e12
            self.figures[f"flop_per_forward_{label}_reference_style_tflop"] = ref["total"] / 1e12
            self.extra.setdefault("flop_breakdown_tflop", {})[label] = {
                k: v / 1e12 for k, v in ours.items()
            }
        a = self.figures[f"flop_per_forward_{MAIN}_reference_style_tflop"]
        b = self.figures[f"flop_per_forward_{MAIN}_tflop"]
        self.say(
            f"FLOP per forward at {MAIN} (full size, analytical): {a:.1f} TFLOP reference-style"
            f" (per-token time MLP; the issue quotes 239.8), {b:.1f} TFLOP ours"
        )

    def build_fusion(self) -> None:
        self.say(f"building the fusion model ({self.preset.name} config) on {self.device}")
        t0 = time.perf_counter()
        self.fusion = random_fusion(self.config.fusion, self.device, self.dtype, seed=1)
        self.clock.sync()
        self.extra["build_fusion_s"] = time.perf_counter() - t0
        # the fast path as the pipeline applies it on CUDA (compile backend per the flags)
        config = opt.FastPath(
            compile=not self.args.no_compile, compile_backend=self.compile_backend
        )
        self.extra["fast_path"] = asdict(config)
        self.extra["attention_check"] = opt.check_attention_backends(self.device, self.dtype)
        # (the check just ran, recorded; optimize_fusion need not repeat it)
        opt.optimize_fusion(self.fusion, replace(config, check_attention=False), self.device)
        self.extra["attention_backend"] = attn.attention_backend(self.device, self.dtype)

    def run_dit(self) -> None:
        self.build_fusion()
        cfg = self.config.fusion
        labels = [label for label in LABELS if label in self.args.shapes]
        for label in LABELS:
            if label not in labels:
                self.note(_shape_keys(label)[2:], "shape not selected (--shapes)")
        for n, label in enumerate(labels):
            shape = self.shapes[label]
            keys = _shape_keys(label)
            self.end_clip()  # one clip per shape: no other shape's text K/V in its peak
            try:
                self._dit_shape(label, shape, first=n == 0)
            except torch.OutOfMemoryError as err:
                self.free()
                self.note(keys[2:], f"out of memory: {str(err).splitlines()[0]}")
                self.say(f"{label}: out of memory, skipped")
                continue
            flops = step_flops(cfg, shape)
            ref_flops = step_flops(cfg, shape, per_token_time=True)
            f = self.figures
            f[f"step_{label}_ours_tflops"] = flops / (f[f"step_{label}_ours_ms"] / 1e3) / 1e12
            f[f"step_{label}_reference_tflops"] = (
                ref_flops / (f[f"step_{label}_reference_ms"] / 1e3) / 1e12
            )
            f[f"step_{label}_ours_mfu"] = self.mfu(flops, f[f"step_{label}_ours_ms"])
            f[f"step_{label}_reference_mfu"] = self.mfu(ref_flops, f[f"step_{label}_reference_ms"])
            if self.peak is None:
                self.note([f"step_{label}_ours_mfu", f"step_{label}_reference_mfu"], "CUDA only")

    def _dit_shape(self, label: str, shape: Shape, first: bool) -> None:
        f = self.figures
        if self.cuda and self.extra["fast_path"].get("attention_by_shape"):
            self._choose_attention(label)  # as the pipeline does before a clip's first step
        # ours: the first call compiles (a new shape); then the timed runs
        t0 = time.perf_counter()
        self.step(label)
        self.clock.sync()
        if first:
            f["compile_first_step_s"] = time.perf_counter() - t0
            self.extra["compile_backend"] = self.compile_backend
        with self.clock.peak_memory(f, f"step_{label}_ours_peak_mem_gib"):
            ms, (ours_v, ours_a) = self.clock.median(lambda: self.step(label))
        f[f"step_{label}_ours_ms"] = ms
        with opt.reference_style(self.fusion):
            with self.clock.peak_memory(f, f"step_{label}_reference_peak_mem_gib"):
                ms, (ref_v, ref_a) = self.clock.median(lambda: self.step(label))
        f[f"step_{label}_reference_ms"] = ms
        f[f"step_{label}_speedup"] = f[f"step_{label}_reference_ms"] / f[f"step_{label}_ours_ms"]
        f[f"step_{label}_rel_err_video"] = rel_err(ours_v, ref_v)
        f[f"step_{label}_rel_err_audio"] = rel_err(ours_a, ref_a)
        if label == MAIN:
            self.main_outputs = (ours_v, ours_a)
        self.say(
            f"step {label} ({shape.label} run): ours {f[f'step_{label}_ours_ms']:.1f} ms,"
            f" reference-style {f[f'step_{label}_reference_ms']:.1f} ms,"
            f" ratio {f[f'step_{label}_speedup']:.2f}x, rel err video"
            f" {f[f'step_{label}_rel_err_video']:.2e} audio {f[f'step_{label}_rel_err_audio']:.2e}"
        )

    def run_variants(self) -> None:
        """At the main shape: recompiles, host syncs, batched CFG, block offload, fp8."""
        if self.main_outputs is None:
            self.note(list(VARIANT_KEYS), f"needs the dit section at {MAIN} (--shapes)")
            return
        table = time_attention_backends(self.config.fusion, self.shapes[MAIN], self.clock)
        self.extra["attention_backend_ms"] = table
        cases = {case for timings in table.values() for case in timings}
        self.extra["attention_fastest"] = {  # per shape: what a per-shape choice would pick
            case: min(
                (t[case], name) for name, t in table.items() if isinstance(t.get(case), float)
            )[1]
            for case in sorted(cases)
            if any(isinstance(t.get(case), float) for t in table.values())
        }
        f, label, fusion = self.figures, MAIN, self.fusion
        ours_v, ours_a = self.main_outputs
        ours_ms = f[f"step_{label}_ours_ms"]
        # a second request of the same shape (new timestep, new noise): no recompiles
        graphs = _unique_graphs()
        x = self.inputs(label)
        saved = dict(x)
        x["t"] = torch.tensor([412], device=self.device)
        x["video"] = torch.randn_like(x["video"])
        self.step(label)
        self.step_inputs[label] = saved
        f["recompiles_second_request"] = _unique_graphs() - graphs
        # host syncs
        if self.cuda:
            f["host_syncs_per_step_fusion"] = count_host_syncs(lambda: self.step(label))
            sched = make_scheduler("unipc", 50, 5.0)
            sample = x["video"].float()
            ts = sched.timesteps
            for t in ts[:2]:  # step 1 copies the sigma table over once; step 2 has no order-2
                sched.step(sample, t, sample)  # corrector yet: step 3 is a typical one
            f["host_syncs_per_step_scheduler"] = count_host_syncs(
                lambda: sched.step(sample, ts[2], sample)
            )
        else:
            self.note(["host_syncs_per_step_fusion", "host_syncs_per_step_scheduler"], "CUDA only")
        # batched CFG
        self.step(label, batch_cfg=True)  # compiles the batch-2 graph
        with self.clock.peak_memory(f, "batched_cfg_peak_mem_gib"):
            ms, (bv, ba) = self.clock.median(lambda: self.step(label, batch_cfg=True))
        f[f"step_{label}_batched_cfg_ms"] = ms
        f["batched_cfg_speedup"] = ours_ms / ms  # > 1: batched CFG should be the default here
        f["batched_cfg_rel_err_video"] = rel_err(bv, ours_v)
        f["batched_cfg_rel_err_audio"] = rel_err(ba, ours_a)
        self.say(f"batched CFG {ms:.1f} ms (sequential {ours_ms:.1f} ms)")
        # block offload
        self.free()
        offload = opt.enable_block_offload(fusion, self.device)
        try:
            self.step(label)
            with self.clock.peak_memory(f, "offload_peak_mem_gib"):
                ms, (ov, oa) = self.clock.median(lambda: self.step(label))
            f[f"step_{label}_offload_ms"] = ms
            f["offload_rel_err_video"] = rel_err(ov, ours_v)
            f["offload_rel_err_audio"] = rel_err(oa, ours_a)
            self.say(f"block offload {ms:.1f} ms")
        finally:
            offload.disable()
            self.free()
        # fp8 compute
        try:
            opt.enable_fp8(fusion, keep_original=True)
            self.step(label)  # compiles the fp8 graph
            ms, (qv, qa) = self.clock.median(lambda: self.step(label))
            f[f"step_{label}_fp8_ms"] = ms
            f["fp8_speedup"] = ours_ms / ms
            f["fp8_rel_err_video"] = rel_err(qv, ours_v)
            f["fp8_rel_err_audio"] = rel_err(qa, ours_a)
            self.say(
                f"fp8 {ms:.1f} ms, rel err vs bf16 video {f['fp8_rel_err_video']:.2e}"
                f" audio {f['fp8_rel_err_audio']:.2e}"
            )
        except (RuntimeError, NotImplementedError) as err:
            keys = [f"step_{label}_fp8_ms", "fp8_speedup", "fp8_rel_err_video", "fp8_rel_err_audio"]
            self.note(keys, f"fp8 failed: {str(err).splitlines()[0][:200]}")
        finally:
            opt.disable_fp8(fusion)
        self._exact_gains()

    def _choose_attention(self, label: str) -> None:
        """The per-shape attention backends for `label` (timed once per shape), recorded."""
        x = self.inputs(label)
        opt.choose_clip_attention(self.fusion, x["video"], x["audio"])
        self.extra["attention_by_shape"] = {
            f"{lq}x{lk} h{h} d{d} {str(dt_).removeprefix('torch.')}": name
            for (lq, lk, h, d, dt_), name in attn.shape_backends().items()
        }

    def _exact_gains(self) -> None:
        """Each exact gain (`GAINS`) timed on vs off at the main shape, the rest of the plan as
        the default; a gain that fails is a note and the next one runs."""
        fusion, cache = self.fusion, self.fusion.clip_cache
        backend = self.compile_backend
        compiled = fusion.layer_fn is not fusion_layer
        table = attn.shape_backends()
        gelu_fused = any(isinstance(m, opt.FusedGeluFFN) for m in fusion.modules())

        def share(on: bool) -> None:
            fusion.share_first_layer = on

        def fp32_cache(on: bool) -> None:
            if cache is None:
                raise RuntimeError("the fp32 weight cache needs the clip cache")
            cache.fp32_weights = on

        def by_shape(on: bool) -> None:
            attn.set_shape_backends(None)
            if on:
                self._choose_attention(MAIN)

        def gelu_eager(on: bool) -> None:
            opt.uncompile_layers(fusion)
            opt.fuse_gelu(fusion, on)

        def graphs(on: bool) -> None:
            if not self.cuda:
                raise _CudaOnly
            opt.compile_layers(fusion, backend=backend, mode="reduce-overhead" if on else None)

        gains: dict[str, tuple[Callable[[bool], None], bool, bool]] = {
            # gain: (switch, its default state, batched CFG)
            "share_first_layer": (share, fusion.share_first_layer, False),
            "share_first_layer_batched": (share, fusion.share_first_layer, True),
            "fp32_weight_cache": (fp32_cache, bool(cache and cache.fp32_weights), False),
            "fused_gelu": (partial(opt.fuse_gelu, fusion), gelu_fused, False),
            "fused_gelu_eager": (gelu_eager, gelu_fused, False),
            "attention_by_shape": (by_shape, bool(table), False),
            "cuda_graphs": (graphs, False, False),
        }
        for gain in GAINS:
            switch, default, batched = gains[gain]
            try:
                self._time_gain(gain, switch, batched)
            except _CudaOnly:
                self.note(gain_keys(gain), "CUDA only")
            except Exception as err:  # noqa: BLE001 - recorded; the next gain runs
                self.free()
                text = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
                self.note(gain_keys(gain), f"{gain} failed: {text}")
                self.say(f"{gain} failed: {text}")
            finally:
                self.end_clip()
                try:  # back to the default plan
                    switch(default)
                except _CudaOnly:
                    pass
                if gain in ("fused_gelu_eager", "cuda_graphs") and compiled:
                    opt.compile_layers(fusion, backend=backend)
                attn.set_shape_backends(table)

    def _time_gain(self, gain: str, switch: Callable[[bool], None], batched: bool) -> None:
        f, label = self.figures, MAIN
        ms, out = {}, {}
        for on in (False, True):
            switch(on)
            self.end_clip()
            if gain == "cuda_graphs":  # CUDA graphs record on the calls after the compile
                for _ in range(2):
                    self.step(label, batch_cfg=batched)
            ms[on], out[on] = self.clock.median(lambda: self.step(label, batch_cfg=batched))
        on_ms, off_ms, speedup, err_v, err_a = gain_keys(gain)
        f[on_ms], f[off_ms] = ms[True], ms[False]
        f[speedup] = ms[False] / ms[True]
        f[err_v] = rel_err(out[True][0], out[False][0])
        f[err_a] = rel_err(out[True][1], out[False][1])
        self.say(
            f"{gain}: on {ms[True]:.1f} ms, off {ms[False]:.1f} ms ({f[speedup]:.3f}x),"
            f" rel err video {f[err_v]:.2e} audio {f[err_a]:.2e}"
        )

    def run_t5(self) -> None:
        self.text_encoder = build_text_encoder(self.config, self.device, self.dtype, seed=7)
        with torch.no_grad(), self.clock.peak_memory(self.figures, "t5_peak_mem_gib"):
            ms, _ = self.clock.median(lambda: self.text_encoder.encode(list(PROMPTS)))
        self.figures["t5_3_prompts_ms"] = ms
        self.say(f"T5 on 3 prompts: {ms:.1f} ms")

    def run_vae(self) -> None:
        f, shape = self.figures, self.shapes[MAIN]
        self.video_vae, vae32 = build_video_vaes(self.config, self.device, self.dtype, seed=3)
        vae = self.video_vae
        g = torch.Generator().manual_seed(5)
        image = (torch.rand(1, 3, shape.height, shape.width, generator=g) * 2 - 1).to(self.device)
        latent = torch.randn(
            1, 48, shape.latent_frames, shape.height // 16, shape.width // 16, generator=g
        ).to(self.device)
        with torch.no_grad():
            f["vae_encode_image_ms"], _ = self.clock.median(
                lambda: vae.encode_image(image.to(self.dtype))
            )
            with _no_tf32():  # the float32 reference decode: true float32 (the default VAE)
                f["vae_decode_fp32_ms"], ref = self.clock.once(partial(vae32.decode, latent))
            del vae32
            self.free()
            # stock diffusers (fp32 round trips, whole chunks), then ours: whole, then in pieces
            vae.tail_frames = None
            f["vae_decode_stock_bf16_ms"], stock = self.clock.median(
                lambda: vae.decode(latent.to(self.dtype))
            )
            f["vae_decode_stock_bf16_rel_err"] = rel_err(stock.float(), ref)
            f["vae_decode_stock_bf16_pixel_err_max"] = _pixel_err(stock, ref)[0]
            del stock
            opt.vae_skip_upcasts(vae)
            with self.clock.peak_memory(f, "vae_decode_whole_peak_mem_gib"):
                f["vae_decode_whole_ms"], _ = self.clock.median(
                    lambda: vae.decode(latent.to(self.dtype))
                )
            vae.tail_frames = 1  # as the pipeline decodes
            with self.clock.peak_memory(f, "vae_decode_peak_mem_gib"):
                f["vae_decode_ms"], fast = self.clock.median(
                    lambda: vae.decode(latent.to(self.dtype))
                )
            f["vae_decode_rel_err"] = rel_err(fast.float(), ref)
            f["vae_decode_pixel_err_max"], f["vae_decode_pixel_err_mean"] = _pixel_err(fast, ref)
            self._vae_switches(vae, latent, fast)
            del fast
            # spatial tiling (diffusers' defaults): caps memory, blends tile seams
            vae.enable_tiling()
            with self.clock.peak_memory(f, "vae_decode_tiled_peak_mem_gib"):
                f["vae_decode_tiled_ms"], tiled = self.clock.median(
                    lambda: vae.decode(latent.to(self.dtype))
                )
            f["vae_decode_tiled_pixel_err_max"] = _pixel_err(tiled, ref)[0]
            vae.disable_tiling()
            opt.vae_skip_upcasts(vae, enable=False)  # the pipeline section applies it again
        self.say(
            f"VAE: encode image {f['vae_encode_image_ms']:.1f} ms; decode {shape.label}"
            f" fp32 (default, official) {f['vae_decode_fp32_ms']:.1f} ms; --fast-vae"
            f" {f['vae_decode_ms']:.1f} ms (max pixel err vs fp32 {f['vae_decode_pixel_err_max']}"
            f" of 255, mean {f['vae_decode_pixel_err_mean']:.3f}), stock bf16"
            f" {f['vae_decode_stock_bf16_ms']:.1f} ms, tiled {f['vae_decode_tiled_ms']:.1f} ms"
        )

    def _vae_switches(self, vae: Any, latent: torch.Tensor, default: torch.Tensor) -> None:
        """The decoder's exact switches (`FastPath.vae_channels_last`, `vae_compile`) on the
        decode just timed (`vae_decode_ms`): time, speed-up and pixel difference to it (with
        --small on the first two latent frames, against their own default decode)."""
        f = self.figures
        base_ms = f["vae_decode_ms"]
        if self.small:  # CI checks that the code runs: two latent frames, their own baseline
            latent = latent[:, :, :2]
            base_ms, default = self.clock.median(lambda: vae.decode(latent.to(self.dtype)))
        switches = {
            "channels_last": vae.use_channels_last,
            "compiled": partial(vae.compile_decoder, backend=self.compile_backend),
        }
        for name in VAE_SWITCHES:
            switch, keys = switches[name], vae_switch_keys(name)
            ms_key = keys[0]
            try:
                switch(True)  # (the clock's warm-up call compiles)
                f[ms_key], out = self.clock.median(lambda: vae.decode(latent.to(self.dtype)))
                f[keys[1]] = base_ms / f[ms_key]
                f[keys[2]] = _pixel_err(out, default)[0]
                self.say(f"VAE decode {name}: {f[ms_key]:.1f} ms ({f[keys[1]]:.3f}x)")
                del out
            except Exception as err:  # noqa: BLE001 - recorded; the section goes on
                text = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
                self.note(keys, f"vae {name} failed: {text}")
            finally:
                switch(False)

    def run_audio(self) -> None:
        shape = self.shapes[MAIN]
        self.audio_vae, self.vocoder = build_audio(self.config, self.device, seed=9)
        z = torch.randn(1, shape.audio_tokens, 20, generator=torch.Generator().manual_seed(2))
        z = z.to(self.device)

        def decode() -> torch.Tensor:
            return self.vocoder(self.audio_vae.decode(z.transpose(1, 2)))

        with torch.no_grad():
            self.figures["audio_decode_ms"], _ = self.clock.median(decode)
        self.say(f"audio decode: {self.figures['audio_decode_ms']:.1f} ms")

    def run_pipeline(self) -> None:
        f, shape = self.figures, self.shapes[MAIN]
        needed = ("fusion", "text_encoder", "video_vae", "audio_vae", "vocoder")
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            keys = list(SECTION_KEYS["pipeline"])
            self.note(keys, f"needs the sections that build {', '.join(missing)}")
            return
        pipe = OviPipeline(
            self.preset, self.text_encoder, self.fusion, self.video_vae, self.audio_vae,
            self.vocoder,
            runtime=RuntimeOptions(
                device=str(self.device), dtype=str(self.dtype).removeprefix("torch.")
            ),
            transforms=opt.FastPath(
                compile=not self.args.no_compile, compile_backend=self.compile_backend,
                check_attention=False,
            ),
        )  # fmt: skip
        kw = dict(height=shape.height, width=shape.width, seed=0)
        pipe(PROMPTS[0], steps=2, **kw)  # warm-up (the denoise shape is compiled already)
        with self.clock.peak_memory(f, "pipeline_peak_mem_gib"):
            for steps in PIPELINE_STEPS:
                self.clock.sync()
                t0 = time.perf_counter()
                out = pipe(PROMPTS[0], steps=steps, **kw)
                self.clock.sync()
                f[f"pipeline_{steps}_steps_s"] = time.perf_counter() - t0
                self.extra[f"pipeline_{steps}_steps_timings_s"] = out.timings
                self.extra[f"pipeline_{steps}_steps_dit_forwards"] = out.metrics["dit_forwards"]
        for steps in PIPELINE_STEPS:
            self.note(f"pipeline_{steps}_steps_s", "measured end to end, one run, wall clock")
        self.say(
            "pipeline "
            + ", ".join(f"{s} steps {f[f'pipeline_{s}_steps_s']:.2f} s" for s in PIPELINE_STEPS)
        )

    def run_totals(self) -> None:
        """The 50- and 30-step totals composed from the measured parts (cheap: no GPU work)."""
        f = self.figures
        parts = ("t5_3_prompts_ms", f"step_{MAIN}_ours_ms", "vae_decode_ms", "audio_decode_ms")
        missing = [k for k in parts if f[k] is None]
        keys = [f"pipeline_{steps}_steps_composed_s" for steps in PIPELINE_STEPS]
        if missing:
            self.note(keys, f"needs the measured parts {', '.join(missing)}")
            return
        for steps, key in zip(PIPELINE_STEPS, keys, strict=True):
            f[key] = (
                f["t5_3_prompts_ms"]
                + steps * f[f"step_{MAIN}_ours_ms"]
                + f["vae_decode_ms"]
                + f["audio_decode_ms"]
            ) / 1e3
            self.note(
                key,
                "composed from measured parts: T5 + steps x one step (both passes) + VAE decode"
                " + audio decode; excludes scheduler steps and host overhead",
            )
        self.say(
            "composed totals: "
            + ", ".join(
                f"{s} steps {f[k]:.2f} s" for s, k in zip(PIPELINE_STEPS, keys, strict=True)
            )
            + f"; the official README, 50 steps: {OFFICIAL_README_S['fa3']:g} s with FA3,"
            f" {OFFICIAL_README_S['fa2']:g} s with FA2 (its hardware, its harness)"
        )
        self.extra["official_readme_50_steps_s"] = OFFICIAL_README_S

    def run_profile(self) -> None:
        """One step under torch.profiler: the top 20 kernels by self time, saved beside the JSON
        (`<out stem>.kernels.txt`) and under extra.profile_top20."""
        from torch.profiler import ProfilerActivity, profile

        labels = [label for label in LABELS if label in self.args.shapes]
        if self.fusion is None or not labels:
            raise RuntimeError("the profile needs the dit section (the model and a shape)")
        label = labels[0]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.step(label)  # compiled and warm
        self.clock.sync()
        with profile(activities=activities) as prof:
            self.step(label)
            self.clock.sync()
        events = prof.key_averages()
        attr = "self_cpu_time_total"
        if self.cuda:
            attr = next(
                (a for a in ("self_device_time_total", "self_cuda_time_total") if hasattr(
                    events[0], a)),
                attr,
            )  # fmt: skip
        top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:20]
        total = sum(getattr(e, attr) for e in events) or 1.0
        self.extra["profile_top20"] = {
            "shape": label,
            "sorted_by": attr,
            "kernels": [
                {
                    "name": e.key[:160],
                    "calls": e.count,
                    "self_ms": getattr(e, attr) / 1e3,
                    "share": getattr(e, attr) / total,
                }
                for e in top
            ],
        }
        table = events.table(sort_by=attr, row_limit=20, max_name_column_width=80)
        if self.out is not None:
            path = self.out.with_name(self.out.stem + ".kernels.txt")
            path.write_text(f"one step at {label} ({self.shapes[label].label} run)\n{table}\n")
            self.extra["profile_table"] = str(path)
        self.say(f"profile: top kernel {top[0].key[:80]} ({getattr(top[0], attr) / 1e3:.1f} ms)")

    def run_memory(self) -> None:
        """Full-size estimates on the meta device, whatever the machine and --small."""
        labels = [label for label in LABELS if label in self.args.shapes or label == MAIN]
        sampling = get_preset(self.args.variant).sampling
        estimates = estimate_memory(
            self.full_config, {label: FULL_SHAPES[label] for label in labels}, MAIN, len(PROMPTS),
            (sampling.video_guidance_scale, sampling.audio_guidance_scale), sampling.slg_layer,
        )  # fmt: skip
        self.figures.update(estimates)
        for key in estimates:
            self.note(key, ESTIMATE_NOTE)
        self.say(
            f"memory (estimated at full size, meta device): pipeline peak"
            f" {estimates['est_pipeline_peak_gib']:.2f} GiB all resident (the default on a GPU"
            f" of 42 GiB or more; {estimates['est_pipeline_peak_default_40gb_gib']:.2f} GiB, umT5"
            " on the host, is the default on a 40 GB card),"
            f" {estimates['est_pipeline_peak_text_encoder_offload_gib']:.2f} GiB with text-encoder"
            f" offload, {estimates['est_pipeline_peak_cpu_offload_gib']:.2f} GiB cpu_offload,"
            f" {estimates['est_pipeline_peak_block_offload_gib']:.2f} GiB block offload"
        )

    def run_parallel(self) -> None:
        run_parallel_section(self)

    # --- driver -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the selected sections in order; every section's exception is caught and recorded,
        the JSON at `--out` is rewritten after each, and once `--budget-s` seconds have passed
        the section running is interrupted and no other starts (`BudgetExpired`)."""
        registry = sections.registered()
        selected = self.args.sections
        budget = self.args.budget_s
        self.t0 = time.perf_counter()
        for name in registry:
            if name not in selected:
                self.status[name] = {"status": "not run", "reason": "not selected (--sections)"}
        for name in selected:
            self.status[name] = {"status": "not run", "reason": "not reached yet"}
        self.run_flops()
        self.write()
        stopped = ""
        with _budget_alarm(budget, self.t0), _stop_signals():
            try:
                for name in selected:
                    used = time.perf_counter() - self.t0
                    if budget is not None and used >= budget:
                        stopped = f"budget of {budget:g} s used up ({used:.1f} s)"
                        break
                    self._run_section(registry[name])
                    self.write()
            except Stop as stop:  # budget expired or the process was asked to stop
                stopped = str(stop)
        for name in selected:
            if self.status[name].get("reason") == "not reached yet":
                self.status[name] = {"status": "not run", "reason": stopped or "not reached"}
        self.write()
        return self.result()

    def _run_section(self, sec: sections.Section) -> None:
        start = time.perf_counter()
        self.say(f"== section {sec.name} ==")
        state: dict[str, Any] = {"status": "running"}
        self.status[sec.name] = state
        self.write()  # a hard crash (segfault, kill -9) leaves this section marked "running"
        try:
            sec.run(self)
            state["status"] = "ok"
        except Stop as stop:
            state.update(status="interrupted", error=str(stop))
            self._section_failed(sec, f"section interrupted: {stop}")
            self.say(f"section {sec.name} interrupted: {stop}")
            raise
        except Exception as err:  # noqa: BLE001 - any failure is recorded; the next section runs
            text = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
            state.update(status="failed", error=text)
            state["traceback"] = traceback.format_exc(limit=8)[-4000:]
            self._section_failed(sec, f"section failed: {text}")
            self.say(f"section {sec.name} failed: {text}")
        finally:
            state["wall_s"] = time.perf_counter() - start
            self.extra.setdefault("section_wall_s", {})[sec.name] = state["wall_s"]
            self.free()

    def _section_failed(self, sec: sections.Section, text: str) -> None:
        for key in sec.keys:
            if self.figures.get(key) is None and key not in self.notes:
                self.notes[key] = text

    def _not_run(self, names: list[str], reason: str) -> None:
        for name in names:
            self.status[name] = {"status": "not run", "reason": reason}

    def result(self) -> dict[str, Any]:
        """The JSON object: valid at any moment (after each section and at the end)."""
        notes = dict(self.notes)
        registry = sections.registered()
        for name, state in self.status.items():
            if state["status"] == "not run" and name in registry:
                for key in registry[name].keys:
                    notes.setdefault(key, f"section not run: {state['reason']}")
        for key, value in self.figures.items():
            if value is None and key not in notes:
                cuda_only = not self.cuda and key.endswith(("_mfu", "_peak_mem_gib"))
                notes[key] = "CUDA only" if cuda_only else "not measured"
        self.extra["wall_s"] = time.perf_counter() - self.t0
        return {
            "meta": self.meta(),
            "sections": self.status,
            "sections_not_run": {
                name: state["reason"]
                for name, state in self.status.items()
                if state["status"] == "not run"
            },
            "figures": self.figures,
            "notes": {k: notes[k] for k in self.keys if k in notes},
            "extra": self.extra,
        }

    def write(self) -> None:
        """Rewrite the JSON at --out (atomically: a reader never sees half a file)."""
        if self.out is not None:
            write_json(self.out, self.result())

    def meta(self) -> dict[str, Any]:
        gpu = torch.cuda.get_device_name(self.device) if self.cuda else None
        return {
            "date": dt.date.today().isoformat(),
            "gpu": gpu,
            "device": str(self.device),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "small": self.small,
            "variant": self.args.variant,
            "config": self.preset.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "runs": self.clock.runs,
            "warmup": self.clock.warmup,
            "timer": "cuda events" if self.cuda else "wall clock (perf_counter)",
            "sections": list(self.args.sections),
            "plan": self.args.plan,
            "budget_s": self.args.budget_s,
            "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
            "shapes": {label: asdict(shape) for label, shape in self.shapes.items()},
            "python": sys.version.split()[0],
        }


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _pixel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[int, float]:
    """(max, mean) |difference| of the 8-bit frames the pipeline would write."""

    def to_u8(x: torch.Tensor) -> torch.Tensor:
        return to_uint8(x).to(torch.int16)  # the pipeline's (official) conversion

    diff = (to_u8(out) - to_u8(ref)).abs()
    return int(diff.max()), float(diff.float().mean())


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


class _CudaOnly(Exception):  # noqa: N818 - a gain measured on a GPU only
    pass


class Stop(BaseException):  # noqa: N818 - not an error: the run is asked to stop
    """The budget expired or the process got SIGTERM/SIGINT: the section running stops, no
    other starts, the JSON is written. A BaseException so that sections' `except Exception`
    (kept for their own failures) does not swallow it."""


@contextlib.contextmanager
def _budget_alarm(budget_s: float | None, t0: float) -> Iterator[None]:
    """SIGALRM at t0 + budget_s raises `Stop` in the main thread (between Python bytecodes, so
    a long kernel finishes first). No-op without a budget or off the main thread."""
    if budget_s is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_sig: int, _frame: Any) -> None:
        raise Stop(f"budget of {budget_s:g} s expired")

    saved = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(budget_s - (time.perf_counter() - t0), 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGINT (e.g. `timeout` around the run) raise `Stop`: the JSON is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(sig: int, _frame: Any) -> None:
        raise Stop(f"stopped by {signal.Signals(sig).name}")

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write `result` to `path` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def register_builtins() -> None:
    """The built-in sections (methods `Bench.run_<name>`), then the `sections.PLUGINS`."""
    registry = sections.registered()
    for name in BUILTIN_SECTIONS:
        if name not in registry:
            sections.section(name, SECTION_KEYS[name])(
                lambda bench, name=name: getattr(bench, f"run_{name}")()
            )
    for module in sections.PLUGINS:
        importlib.import_module(module)


register_builtins()


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def merge(paths: list[Path]) -> dict[str, Any]:
    """Several partial runs (e.g. one per device call) -> one result; later non-null wins."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    merged = results[0]
    for other in results[1:]:
        for key, value in other["figures"].items():
            if value is not None:
                merged["figures"][key] = value
                merged["notes"].pop(key, None)
        merged["extra"].update(other["extra"])
        for name, state in other.get("sections", {}).items():
            if state.get("status") != "not run" or name not in merged.get("sections", {}):
                merged.setdefault("sections", {})[name] = state
        merged["sections_not_run"] = {
            name: state.get("reason", "")
            for name, state in merged.get("sections", {}).items()
            if state.get("status") == "not run"
        }
        merged["meta"]["sections"] = sorted(
            set(merged["meta"]["sections"]) | set(other["meta"]["sections"])
        )
    merged["meta"]["merged_from"] = [str(p) for p in paths]
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = list(sections.registered())
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="720x720_5s", help="full-size variant (architecture)")
    p.add_argument("--small", action="store_true", help="tiny preset on the CPU (CI check)")
    p.add_argument("--out", type=Path, help="JSON output path (rewritten after every section)")
    p.add_argument("--runs", type=int, help="timed runs per figure (median); 5 GPU, 1 small")
    p.add_argument(
        "--plan",
        default="full",
        choices=sorted(PLANS),
        help="sections and shapes: full (all), lease (the 8-minute GPU command, 704x704x121),"
        " lease-960 (960x960x121 and 960x960x241); --sections/--shapes override",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        help="stop starting sections once this many seconds have passed (the section running"
        " then is interrupted); the JSON lists the sections not run and why",
    )
    p.add_argument("--sections", help=f"comma list, in order, of {', '.join(names)}")
    p.add_argument("--shapes", help=f"comma list of {', '.join(LABELS)}")
    p.add_argument("--no-compile", action="store_true", help="ours without torch.compile")
    p.add_argument(
        "--compile-backend",
        help="torch.compile backend: inductor on GPU, eager (dynamo only) small",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default 1 with --small: stable timings on shared CI cores)",
    )
    p.add_argument("--merge", nargs="+", type=Path, help="merge partial JSON results into --out")
    args = p.parse_args(argv)
    if args.threads is None and args.small:
        args.threads = 1
    plan_sections, plan_shapes = PLANS[args.plan]
    args.sections = [s for s in (args.sections or ",".join(plan_sections)).split(",") if s]
    args.shapes = [s for s in (args.shapes or ",".join(plan_shapes)).split(",") if s]
    for name in args.sections:
        if name not in names:
            p.error(f"unknown section {name!r}; choose from {', '.join(names)}")
    if len(set(args.sections)) != len(args.sections):
        p.error(f"a section is named twice in --sections {','.join(args.sections)}")
    for name in args.shapes:
        if name not in LABELS:
            p.error(f"unknown shape {name!r}; choose from {', '.join(LABELS)}")
    if args.budget_s is not None and args.budget_s < 0:
        p.error(f"--budget-s must be >= 0, got {args.budget_s:g}")
    return args


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.merge:
        if not args.out:
            print("error: --merge needs --out", file=sys.stderr)
            return 2
        result = merge(args.merge)
        write_json(args.out, result)
    else:
        if args.out and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            # the compile cache beside the results: a rerun on the same host is warm
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(
                args.out.parent.resolve() / "inductor-cache"
            )
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        result = Bench(args).run()  # writes --out after every section
    meta = result["meta"]
    where = meta["gpu"] or f"CPU, {meta['cpu_threads']} thread(s), tiny config: CPU figures"
    print(f"\n== figures ({where}; torch {meta['torch']}) ==")
    for key, value in result["figures"].items():
        print(f"{key:48s} {_fmt(value)}")
    for name, reason in result.get("sections_not_run", {}).items():
        print(f"section {name} not run: {reason}")
    for name, state in result.get("sections", {}).items():
        if state["status"] in ("failed", "interrupted"):
            print(f"section {name} {state['status']}: {state.get('error')}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
