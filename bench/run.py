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
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from model import optimize as opt
from model.modules import attention as attn
from model.modules.fusion import FusionModel
from model.options import RuntimeOptions
from model.pipeline import OviPipeline
from model.presets import get_preset
from model.schedulers import make_scheduler

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
SECTIONS = ("matmul", "dit", "variants", "t5", "vae", "audio", "pipeline", "memory", "parallel")
PIPELINE_STEPS = (50, 30)
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


VARIANT_KEYS = (  # at the main shape
    "recompiles_second_request",
    "host_syncs_per_step_fusion",
    "host_syncs_per_step_scheduler",
    f"step_{MAIN}_batched_cfg_ms",
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
)
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "matmul": ("matmul_peak_tflops",),
    "dit": (*(k for label in LABELS for k in _shape_keys(label)[2:]), "compile_first_step_s"),
    "variants": VARIANT_KEYS,
    "t5": ("t5_3_prompts_ms", "t5_peak_mem_gib"),
    "vae": (
        "vae_encode_image_ms",
        "vae_decode_ms",
        "vae_decode_peak_mem_gib",
        "vae_decode_rel_err",
        "vae_decode_pixel_err_max",
        "vae_decode_pixel_err_mean",
        "vae_decode_stock_bf16_ms",
        "vae_decode_stock_bf16_rel_err",
        "vae_decode_stock_bf16_pixel_err_max",
        "vae_decode_tiled_ms",
        "vae_decode_tiled_peak_mem_gib",
        "vae_decode_tiled_pixel_err_max",
    ),
    "audio": ("audio_decode_ms",),
    "parallel": (),  # bench/parallel.py: its figures go under extra["parallel"]
    "pipeline": (
        "pipeline_50_steps_s",
        "pipeline_30_steps_s",
        "pipeline_50_steps_composed_s",
        "pipeline_30_steps_composed_s",
        "pipeline_peak_mem_gib",
    ),
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
        "est_t5_act_gib",
        "est_vae_encode_image_act_gib",
        "est_vae_decode_act_gib",
        "est_vae_decode_stock_act_gib",
        "est_audio_decode_act_gib",
        "est_pipeline_peak_gib",
        "est_pipeline_peak_text_encoder_offload_gib",
        "est_pipeline_peak_cpu_offload_gib",
        "est_pipeline_peak_block_offload_gib",
    ),
}
FLOP_KEYS = tuple(k for label in LABELS for k in _shape_keys(label)[:2])  # analytical, always
FIGURE_KEYS: tuple[str, ...] = (
    SECTION_KEYS["matmul"]
    + FLOP_KEYS
    + SECTION_KEYS["dit"]
    + VARIANT_KEYS
    + SECTION_KEYS["t5"]
    + SECTION_KEYS["vae"]
    + SECTION_KEYS["audio"]
    + SECTION_KEYS["pipeline"]
    + SECTION_KEYS["memory"]
)


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
        runs = args.runs or (1 if self.small else 5)
        self.clock = Clock(self.device, runs=runs, warmup=0 if self.small else 1)
        self.compile_backend = args.compile_backend or ("eager" if self.small else "inductor")
        self.figures: dict[str, float | int | None] = dict.fromkeys(FIGURE_KEYS)
        self.notes: dict[str, str] = {}
        self.extra: dict[str, Any] = {}
        self.fusion: FusionModel | None = None
        self.peak: float | None = None
        self.step_inputs: dict[str, dict[str, torch.Tensor]] = {}
        self.main_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.text_encoder = self.video_vae = self.audio_vae = self.vocoder = None

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
        """One denoising step's model work: both CFG passes + the guidance combination."""
        x, fusion = self.inputs(label), self.fusion
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

    def free(self) -> None:
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
        self.extra["attention_backend_ms"] = time_attention_backends(
            self.config.fusion, self.shapes[MAIN], self.clock
        )
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
            with _no_tf32():  # the float32 reference decode: true float32
                ref = vae32.decode(latent).float()
            del vae32
            self.free()
            # stock diffusers (fp32 round trips), then ours
            f["vae_decode_stock_bf16_ms"], stock = self.clock.median(
                lambda: vae.decode(latent.to(self.dtype))
            )
            f["vae_decode_stock_bf16_rel_err"] = rel_err(stock.float(), ref)
            f["vae_decode_stock_bf16_pixel_err_max"] = _pixel_err(stock, ref)[0]
            del stock
            opt.vae_skip_upcasts(vae)
            with self.clock.peak_memory(f, "vae_decode_peak_mem_gib"):
                f["vae_decode_ms"], fast = self.clock.median(
                    lambda: vae.decode(latent.to(self.dtype))
                )
            f["vae_decode_rel_err"] = rel_err(fast.float(), ref)
            f["vae_decode_pixel_err_max"], f["vae_decode_pixel_err_mean"] = _pixel_err(fast, ref)
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
            f" ours {f['vae_decode_ms']:.1f} ms (max pixel err {f['vae_decode_pixel_err_max']}"
            f" of 255), stock bf16 {f['vae_decode_stock_bf16_ms']:.1f} ms, tiled"
            f" {f['vae_decode_tiled_ms']:.1f} ms"
        )

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
            keys = [k for k in FIGURE_KEYS if k.startswith("pipeline_")]
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
        parts = ("t5_3_prompts_ms", f"step_{MAIN}_ours_ms", "vae_decode_ms", "audio_decode_ms")
        if all(f[k] is not None for k in parts):
            for steps in PIPELINE_STEPS:
                f[f"pipeline_{steps}_steps_composed_s"] = (
                    f["t5_3_prompts_ms"]
                    + steps * f[f"step_{MAIN}_ours_ms"]
                    + f["vae_decode_ms"]
                    + f["audio_decode_ms"]
                ) / 1e3
        for steps in PIPELINE_STEPS:
            self.note(
                f"pipeline_{steps}_steps_composed_s",
                "composed from measured parts: T5 + steps x one step (both passes) + VAE decode"
                " + audio decode; excludes scheduler steps and host overhead",
            )
            self.note(f"pipeline_{steps}_steps_s", "measured end to end, one run, wall clock")
        self.say(
            "pipeline "
            + ", ".join(f"{s} steps {f[f'pipeline_{s}_steps_s']:.2f} s" for s in PIPELINE_STEPS)
        )

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
            f" {estimates['est_pipeline_peak_gib']:.2f} GiB all resident,"
            f" {estimates['est_pipeline_peak_text_encoder_offload_gib']:.2f} GiB with text-encoder"
            f" offload, {estimates['est_pipeline_peak_cpu_offload_gib']:.2f} GiB cpu_offload,"
            f" {estimates['est_pipeline_peak_block_offload_gib']:.2f} GiB block offload"
        )

    def run_parallel(self) -> None:
        run_parallel_section(self)

    # --- driver -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        sections = self.args.sections
        t0 = time.perf_counter()
        self.run_flops()
        for name in SECTIONS:
            if name in sections:
                start = time.perf_counter()
                getattr(self, f"run_{name}")()
                self.extra.setdefault("section_wall_s", {})[name] = time.perf_counter() - start
            else:
                self.note(list(SECTION_KEYS[name]), "section not run (--sections)")
        self.extra["wall_s"] = time.perf_counter() - t0
        for key, value in self.figures.items():
            if value is None and key not in self.notes:
                cuda_only = not self.cuda and key.endswith(("_mfu", "_peak_mem_gib"))
                self.notes[key] = "CUDA only" if cuda_only else "not measured"
        return {
            "meta": self.meta(),
            "figures": self.figures,
            "notes": {k: self.notes[k] for k in FIGURE_KEYS if k in self.notes},
            "extra": self.extra,
        }

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
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.int16)

    diff = (to_u8(out) - to_u8(ref)).abs()
    return int(diff.max()), float(diff.float().mean())


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
        merged["meta"]["sections"] = sorted(
            set(merged["meta"]["sections"]) | set(other["meta"]["sections"])
        )
    merged["meta"]["merged_from"] = [str(p) for p in paths]
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="720x720_5s", help="full-size variant (architecture)")
    p.add_argument("--small", action="store_true", help="tiny preset on the CPU (CI check)")
    p.add_argument("--out", type=Path, help="JSON output path")
    p.add_argument("--runs", type=int, help="timed runs per figure (median); 5 GPU, 1 small")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}"
    )
    p.add_argument("--shapes", default=",".join(LABELS), help=f"comma list of {', '.join(LABELS)}")
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
    args.sections = [s for s in args.sections.split(",") if s]
    args.shapes = [s for s in args.shapes.split(",") if s]
    for name in args.sections:
        if name not in SECTIONS:
            p.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    for name in args.shapes:
        if name not in LABELS:
            p.error(f"unknown shape {name!r}; choose from {', '.join(LABELS)}")
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
        result = merge(args.merge)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        result = Bench(args).run()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    meta = result["meta"]
    where = meta["gpu"] or f"CPU, {meta['cpu_threads']} thread(s), tiny config: CPU figures"
    print(f"\n== figures ({where}; torch {meta['torch']}) ==")
    for key, value in result["figures"].items():
        print(f"{key:48s} {_fmt(value)}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
