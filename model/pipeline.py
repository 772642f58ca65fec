"""OviPipeline: prompt (+ optional first-frame image) -> video frames + 16 kHz audio.

The recipe, exactly as the official release samples:
1. check inputs and pick the resolution (i2v: from the image's aspect ratio; t2v: from the
   requested size, both snapped to the variant's area);
2. encode the prompts (positive prompt formatted per variant, shared by both towers; separate
   video and audio negative prompts);
3. prepare the initial noise (and, for i2v, the first-frame latent from the Wan VAE);
4. denoise: per step a positive pass and a negative pass with the skip-layer-guidance block
   skipped, classifier-free guidance with separate video/audio scales, one solver step per tower;
5. decode: Wan VAE for the frames, MMAudio VAE + BigVGAN for the waveform.

Three objects configure it, each with its own lifetime: the `ModelSource` (which weights),
`RuntimeOptions` (how it runs: `model/options.py`, fixed when loading) and `SamplingParams`
(what one clip looks like: `model/sampling.py`, per call). `load_pipeline` is the one way the
CLI and the server's worker build a pipeline (the benchmark assembles its own full-size random
components with the same constructor).

Seeds (`draw_noise`; README "Reproducing a clip"): the default `noise="official"` draws as the
official release does: the video noise, then the audio noise, each from a fresh
`torch.Generator` on the compute device seeded with `seed`, in the compute dtype (bf16 on
CUDA). A seed then gives the official (and fal's) starting latents on the same kind of device;
CUDA, CPU and MPS generators give different numbers. `noise="portable"` draws both from one CPU
generator in float32 instead: the same starting latents on every device.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .checks import check_device, check_request
from .convert.fusion import load_fusion, random_fusion_state
from .convert.mmaudio import (
    load_audio_vae,
    load_vocoder,
    random_audio_vae_state,
    random_vocoder_state,
)
from .convert.umt5 import load_t5, random_t5_state
from .convert.wan_vae import load_wan_vae, random_wan_vae_state
from .loading import read_checkpoint
from .lora import (
    LoraError,
    LoraSpec,
    apply_loras,
    attach_loras,
    detach_lora,
    load_lora,
    parse_specs,
    set_lora_scales,
)
from .modules.fusion import FusionModel
from .modules.text_encoder import TextEncoder, build_tiny_tokenizer
from .optimize.fast_path import (
    FastPath,
    choose_clip_attention,
    optimize_pipeline,
    projections_fused,
    resolve_fast_path,
    unfuse_projections,
)
from .optimize.offload import visit_device
from .optimize.quantize import quantize_blocks
from .optimize.step_cache import ForwardCount, StepCache
from .options import ModelSource, NoiseMode, RuntimeOptions
from .parallel import ParallelRuntime
from .preprocess import (
    area_mismatch,
    image_target_size,
    preprocess_image,
    snap_hw_to_multiple_of_32,
)
from .presets import AUDIO_SAMPLE_RATE, DEFAULT_VARIANT, VIDEO_FPS, Preset, fast_preset, get_preset
from .sampling import MAX_SEED, SamplingParams
from .schedulers import make_scheduler
from .text import format_prompt
from .weights import DEFAULT_WEIGHTS_DIR, fetch_command, inner_key, resolve_files, variant_files

logger = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """Raised between denoising steps when `should_cancel()` returned True."""


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based: steps done so far
    total: int
    elapsed: float  # seconds since the denoising loop started
    # The current clean-video estimate x0 = x_t - sigma_t * v [B, 48, F, h, w] (for previews,
    # e.g. `model.preview.LatentPreview`); None where the caller gives no callback.
    denoised: torch.Tensor | None = None


MAX_ADAPTERS = 8  # per-request LoRA files a pipeline keeps attached (`OviPipeline.adapters`)


@dataclass
class OviOutput:
    video: np.ndarray  # uint8 [frames, height, width, 3]
    audio: np.ndarray  # float32 [samples], mono, in [-1, 1]
    seed: int
    height: int
    width: int
    fps: int = VIDEO_FPS
    sample_rate: int = AUDIO_SAMPLE_RATE
    prompt: str = ""  # the prompt as the model saw it (after per-variant formatting)
    timings: dict[str, float] = field(default_factory=dict)
    # counters of the clip: DiT forwards run and skipped (`ForwardCount.as_metrics`)
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def denoise(
    fusion: FusionModel,
    video: torch.Tensor,
    audio: torch.Tensor,
    text_pos: torch.Tensor,
    text_video_neg: torch.Tensor,
    text_audio_neg: torch.Tensor,
    params: SamplingParams,
    *,
    first_frame_latent: torch.Tensor | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    batch_cfg: bool = False,
    cache_threshold: float | None = None,
    forwards: ForwardCount | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling loop. Returns the final (video [B,48,F,h,w], audio [B,La,20]) latents.

    video: initial noise [B, 48, F, h, w]; audio: initial noise [B, La, 20];
    text_*: [B, Lt, Dt] (each padded with zeros to the model's text_len inside the model);
    params: steps, solver, shift, the two guidance scales and the skip-layer-guidance block;
    first_frame_latent: [B, 48, 1, h, w] for i2v (written into frame 0 before every pass and
    once after the loop), None for t2v.
    batch_cfg: run both passes as one batch (`FusionModel.forward_cfg`; equal to rounding).
    Guidance 1 on both towers needs no negative pass: it is skipped (one DiT pass per step).
    cache_threshold: step caching (`optimize.step_cache`; None = no cache, 0 = never skips);
    forwards: counts the DiT passes run and skipped.
    """
    steps = params.steps
    video_scheduler = make_scheduler(params.solver, steps, params.shift)
    audio_scheduler = make_scheduler(params.solver, steps, params.shift)
    is_i2v = first_frame_latent is not None
    skip = params.slg_layer
    batch = video.shape[0]
    start = time.perf_counter()
    timesteps = video_scheduler.timesteps.to(video.device)  # once: no host->device copy per step
    sigmas = video_scheduler.sigmas.tolist() if callback is not None else []  # host floats
    negative = not (params.video_guidance_scale == 1 and params.audio_guidance_scale == 1)
    cache = None if cache_threshold is None else StepCache(cache_threshold, steps)
    count = forwards if forwards is not None else ForwardCount()
    for i, t in enumerate(video_scheduler.timesteps):
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(f"cancelled before step {i + 1}/{steps}")
        if is_i2v:
            video = torch.cat([first_frame_latent.to(video.dtype), video[:, :, 1:]], dim=2)
        t_model = timesteps[i].reshape(1).expand(batch)
        reused = cache is not None and cache.skip(i, video, audio)
        if reused:
            outputs = cache.reuse(video, audio)
        elif not negative:
            outputs = [
                fusion(
                    video, audio, t_model, text_pos, text_pos, first_frame_is_clean=is_i2v,
                    slg_layer=None,
                )
            ]  # fmt: skip
        elif batch_cfg:
            pos_v, pos_a, neg_v, neg_a = fusion.forward_cfg(
                video, audio, t_model, (text_pos, text_pos), (text_video_neg, text_audio_neg),
                first_frame_is_clean=is_i2v, slg_layer=skip,
            )  # fmt: skip
            outputs = [(pos_v, pos_a), (neg_v, neg_a)]
        else:
            pos_v, pos_a = fusion(
                video, audio, t_model, text_pos, text_pos, first_frame_is_clean=is_i2v,
                slg_layer=None,
            )  # fmt: skip
            neg_v, neg_a = fusion(
                video, audio, t_model, text_video_neg, text_audio_neg, first_frame_is_clean=is_i2v,
                slg_layer=skip,
            )  # fmt: skip
            outputs = [(pos_v, pos_a), (neg_v, neg_a)]
        if reused:
            count.skipped += len(outputs)
        else:
            count.run += len(outputs)
            if cache is not None:
                cache.store(video, audio, outputs)
        if negative:
            (pos_v, pos_a), (neg_v, neg_a) = outputs
            guided_v = neg_v + params.video_guidance_scale * (pos_v - neg_v)
            guided_a = neg_a + params.audio_guidance_scale * (pos_a - neg_a)
        else:  # guidance 1: neg + 1 * (pos - neg) is the positive pass
            guided_v, guided_a = outputs[0]
        denoised = video - sigmas[i] * guided_v if callback is not None else None  # flow: x0
        video = video_scheduler.step(guided_v, t, video)
        audio = audio_scheduler.step(guided_a, t, audio)
        if callback is not None:
            callback(StepInfo(i + 1, steps, time.perf_counter() - start, denoised))
    if is_i2v:
        video = torch.cat([first_frame_latent.to(video.dtype), video[:, :, 1:]], dim=2)
    return video, audio


def draw_noise(
    mode: NoiseMode,
    seed: int,
    video_shape: tuple[int, ...],
    audio_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial (video, audio) latents for `seed`, on `device` in `dtype`.

    "official": as the official release, each tensor from its own fresh generator on `device`
    seeded with `seed` (video first), drawn directly in `dtype` (bf16 on CUDA) with the
    official unbatched shapes ([C, F, h, w] and [L, C]; a leading batch of 1 is added after).
    "portable": one CPU generator, float32, video then audio, then moved and cast. `seed` may
    be anything `torch.Generator.manual_seed` takes (negative ones included)."""
    if mode == "portable":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        video = torch.randn(video_shape, generator=generator, dtype=torch.float32)
        audio = torch.randn(audio_shape, generator=generator, dtype=torch.float32)
        return video.to(device, dtype), audio.to(device, dtype)
    if mode != "official":
        raise ValueError(f"noise must be official or portable, got {mode!r}")
    drawn = []
    for shape in (video_shape, audio_shape):
        unbatched = shape[1:] if len(shape) > 1 and shape[0] == 1 else shape
        # (a `meta` device has no generator: shapes only, for memory planning)
        generator = None if device.type == "meta" else torch.Generator(device).manual_seed(seed)
        noise = torch.randn(unbatched, dtype=dtype, device=device, generator=generator)
        drawn.append(noise.reshape(shape))
    return drawn[0], drawn[1]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _plan(
    runtime: RuntimeOptions | None,
    transforms: FastPath | None,
    options: dict[str, Any],
    default_device: torch.device | None = None,
) -> tuple[RuntimeOptions, torch.device, FastPath | None]:
    """`runtime` with the keyword `options` applied and its device decided (`default_device`, else
    CUDA when present), the device, and the fast-path plan (`transforms`, else resolved)."""
    runtime = (runtime or RuntimeOptions()).replace(**options)
    check_device(runtime.device)
    device = torch.device(runtime.device or default_device or _default_device())
    runtime = runtime.replace(device=str(device))
    if runtime.offload_text_encoder is None:  # decided by the GPU's size
        runtime = runtime.replace(offload_text_encoder=_small_gpu(device))
    config = transforms if transforms is not None else resolve_fast_path(runtime, device)
    return runtime, device, config


# All resident, the default mode needs ~39.5 GiB at 704x704x121 (README memory table: the Wan VAE
# decodes in float32 math, as the official release); below this much GPU memory umT5 is kept on
# the host instead (35.3 GiB), so a 40 GB card runs the default with the same pixels.
SMALL_GPU_GIB = 42.0


def _small_gpu(device: torch.device) -> bool:
    """True for a CUDA device with less than `SMALL_GPU_GIB` of memory."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_properties(device).total_memory < SMALL_GPU_GIB * 2**30


def _compute_dtype(runtime: RuntimeOptions, device: torch.device) -> torch.dtype:
    """bf16 on GPU as the official release; fp32 on CPU (bf16 matmuls are slow there)."""
    if runtime.dtype is not None:
        return getattr(torch, runtime.dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# The five components, in load order (a random preset seeds them seed+0 .. seed+4):
# role (= its `OviConfig` field) -> (loader, random state, computes in the pipeline's dtype).
# The audio path is small and stays fp32 (its weight-norm folds are fp32 anyway).
_COMPONENTS: dict[str, tuple[Callable[..., nn.Module], Callable[..., dict], bool]] = {
    "t5": (load_t5, random_t5_state, True),
    "fusion": (load_fusion, random_fusion_state, True),
    "video_vae": (load_wan_vae, random_wan_vae_state, True),
    "audio_vae": (load_audio_vae, random_audio_vae_state, False),
    "vocoder": (load_vocoder, random_vocoder_state, False),
}


class OviPipeline:
    """Text (+ image) to video with audio. Build with `load_pipeline`, `from_pretrained` or
    `from_preset`; call with a prompt (and image) and `SamplingParams` or their fields."""

    def __init__(
        self,
        preset: Preset,
        text_encoder: TextEncoder,
        fusion: FusionModel,
        video_vae: nn.Module,
        audio_vae: nn.Module,
        vocoder: nn.Module,
        *,
        runtime: RuntimeOptions | None = None,
        transforms: FastPath | None = None,
        loras: Sequence[LoraSpec] = (),
        **options: Any,
    ) -> None:
        """runtime (or its fields as keywords): device, dtype and memory modes
        (`model/options.py`). The fast path is resolved once here from them
        (`optimize.fast_path.resolve_fast_path`); `transforms` replaces that resolution with an
        explicit plan (benchmarks, tests). `loras` are merged before it, after `runtime.lora`
        (`from_pretrained` adds the few-step mode's FastWan LoRA here)."""
        runtime, self.device, config = _plan(runtime, transforms, options)
        self.runtime = runtime
        self.preset = preset
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.video_vae = video_vae
        self.audio_vae = audio_vae
        self.vocoder = vocoder
        self.dtype = _compute_dtype(runtime, self.device)
        # Wan VAE precision: the official release keeps the VAE's weights in bf16 but encodes and
        # decodes under a float32 autocast (fp32 norms and latent statistics): float32 math on
        # the bf16 weights (`VideoVAE.compute_in_float32`). `fast_vae` computes in the weights'
        # dtype instead.
        if not runtime.fast_vae:
            video_vae.compute_in_float32()
        # block offload: the DiT stays on the host (BlockOffload places it), the rest offloads
        self.cpu_offload = runtime.cpu_offload or (config is not None and config.block_offload)
        components = [text_encoder, fusion, video_vae, audio_vae, vocoder]
        # the components that live in host memory and visit the device (`_on_device`)
        self._offloaded = (
            components
            if self.cpu_offload
            else [text_encoder]
            if runtime.offload_text_encoder
            else []
        )
        for module in components:
            offloaded = any(module is m for m in self._offloaded)
            module.to(torch.device("cpu") if offloaded else self.device).eval()
        # speed and size on purpose (approximate): LoRAs merged, few-step defaults, 8-bit
        specs = [*parse_specs(runtime.lora), *loras]
        self.loras = apply_loras(fusion, specs)  # every file read and checked before any merge
        for spec, lora in zip(specs, self.loras, strict=True):
            logger.info("LoRA %s merged at %g into %s", spec.path, spec.scale, lora.towers)
        if runtime.fast:
            self.preset = fast_preset(preset)
        self.fast_path = optimize_pipeline(self, config)
        if runtime.quantize != "none":
            quantize_blocks(fusion, runtime.quantize)
        # one clip on several ranks (model/parallel): None in a single process
        self.parallel = ParallelRuntime.from_options(runtime)
        # per-request LoRAs (`adapters`): file -> (mtime_ns, size) of the attached version
        self._adapters: dict[str, tuple[int, int]] = {}
        # the few-step mode's FastWan LoRA for requests that ask for it (`from_pretrained` sets
        # it; random-weight presets have none: their fast mode is the sampling preset alone)
        self.fast_lora: Path | None = None
        self.fast_lora_hint = ""

    # ----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_pretrained(
        cls,
        weights_dir: str | Path,
        variant: str = DEFAULT_VARIANT,
        *,
        runtime: RuntimeOptions | None = None,
        transforms: FastPath | None = None,
        **options: Any,
    ) -> OviPipeline:
        """Load a real variant from `weights_dir` (the layout `make weights` creates).

        `runtime.fp8` loads the float8_e4m3fn fusion file (half the disk and host memory); it is
        computed in bf16 unless `fp8_compute`. A missing file raises `WeightFileMissingError`
        naming it and the command that fetches it; a bad runtime combination raises ValueError
        before any file is read."""
        preset = get_preset(variant)
        if preset.random_weights:
            raise ValueError(f"preset {variant!r} has random weights: use OviPipeline.from_preset")
        runtime, device, config = _plan(runtime, transforms, options)
        files = resolve_files(weights_dir, variant, fp8=runtime.fp8, fast=runtime.fast)
        logger.info("loading %s from %s", variant, weights_dir)
        parts = cls._load_components(
            preset,
            runtime,
            device,
            host=runtime.cpu_offload or (config is not None and config.block_offload),
            state=lambda role: read_checkpoint(files[role], inner_key=inner_key(role)),
            source=lambda role: str(files[role]),
            tokenizer_dir=files["tokenizer"],
        )
        loras = [LoraSpec(str(files["fast_lora"]))] if runtime.fast else []
        pipe = cls(preset, *parts, runtime=runtime, transforms=config, loras=loras)
        if not runtime.fast:  # per-request fast mode: the file is attached on first use
            pipe.fast_lora = Path(weights_dir) / variant_files(variant, fast=True)[-1].local
            pipe.fast_lora_hint = fetch_command(variant, Path(weights_dir), runtime.fp8, fast=True)
        return pipe

    @classmethod
    def from_preset(
        cls,
        name: str = "tiny",
        *,
        seed: int = 0,
        runtime: RuntimeOptions | None = None,
        transforms: FastPath | None = None,
        **options: Any,
    ) -> OviPipeline:
        """Build a random-weight preset (e.g. `tiny`) through the same load paths as real files.

        The device defaults to the CPU here (not CUDA): these presets are for tests and demos."""
        preset = get_preset(name)
        if not preset.random_weights:
            raise ValueError(
                f"preset {name!r} needs its weight files: use OviPipeline.from_pretrained(weights_dir, variant={name!r})"
            )
        runtime, device, config = _plan(runtime, transforms, options, torch.device("cpu"))
        seeds = {role: seed + i for i, role in enumerate(_COMPONENTS)}
        with tempfile.TemporaryDirectory(prefix="ovi-tiny-tokenizer-") as tokenizer_dir:
            build_tiny_tokenizer(Path(tokenizer_dir), preset.config.t5.vocab)  # loaded eagerly
            parts = cls._load_components(
                preset,
                runtime,
                device,
                host=False,
                state=lambda role: _COMPONENTS[role][1](getattr(preset.config, role), seeds[role]),
                source=lambda role: "random",
                tokenizer_dir=Path(tokenizer_dir),
            )
        return cls(preset, *parts, runtime=runtime, transforms=config)

    @staticmethod
    def _load_components(
        preset: Preset,
        runtime: RuntimeOptions,
        device: torch.device,
        *,
        host: bool,
        state: Callable[[str], dict[str, torch.Tensor]],
        source: Callable[[str], str],
        tokenizer_dir: Path,
    ) -> list[nn.Module]:
        """The five components in `_COMPONENTS` order (umT5 wrapped with its tokenizer), each
        loaded strictly from `state(role)`; into host memory where it will be offloaded."""
        dtype = _compute_dtype(runtime, device)
        parts = []
        for role, (load, _, in_dtype) in _COMPONENTS.items():
            on_host = host or (role == "t5" and runtime.offload_text_encoder)
            kwargs: dict[str, Any] = {"dtype": dtype} if in_dtype else {}
            cfg = getattr(preset.config, role)
            module = load(
                state(role),
                cfg,
                source=source(role),
                device=torch.device("cpu") if on_host else device,
                **kwargs,
            )
            if role == "t5":
                module = TextEncoder(module, tokenizer_dir=tokenizer_dir, text_len=cfg.text_len)
            parts.append(module)
        return parts

    # ----------------------------------------------------------------------------------------
    # the recipe

    def check_inputs(self, prompt: str, params: SamplingParams) -> None:
        """Raise ValueError naming the first bad value."""
        check_request(self.preset, prompt, params)

    def resolve_size(self, image: Image.Image | None, params: SamplingParams) -> tuple[int, int]:
        """(H, W) in pixels: i2v from the image's aspect ratio, t2v from the requested size."""
        area = self.preset.video_area
        if image is not None:
            return image_target_size(image.width, image.height, area)
        h, w = params.height, params.width
        size = snap_hw_to_multiple_of_32(h, w, area)
        if area_mismatch(h, w, area):
            logger.warning(
                "requested %dx%d is far from the %s area (%d px); generating at %dx%d",
                w, h, self.preset.name, area, size[1], size[0],
            )  # fmt: skip
        return size

    def format_prompt(self, prompt: str) -> str:
        """The positive prompt in the variant's caption format (logged when rewritten)."""
        formatted = format_prompt(prompt, self.preset.prompt_style)
        if formatted != prompt:
            logger.warning(
                "prompt rewritten to the %s caption format: %r", self.preset.name, formatted
            )
        return formatted

    @torch.no_grad()
    def encode_prompt(
        self, prompt: str, video_negative: str, audio_negative: str
    ) -> tuple[torch.Tensor, ...]:
        """T5 embeddings [1, len, dim] for (positive, video negative, audio negative); the
        positive prompt as `format_prompt` returns it."""
        with self._on_device(self.text_encoder):
            embeddings = self.text_encoder.encode([prompt, video_negative, audio_negative])
        return tuple(e[None].to(self.device, self.dtype) for e in embeddings)

    def latent_shapes(self, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(video [1, C, F, H/s, W/s], audio [1, La, Ca]) latent shapes; s and the channels
        from the configs (the Wan VAE's spatial compression, the towers' input widths)."""
        cfg = self.preset.config
        s = cfg.video_vae.spatial_compression
        if height % s or width % s:
            raise ValueError(f"size {height}x{width} is not a multiple of {s} pixels")
        video = (
            1,
            cfg.fusion.video.in_dim,
            self.preset.video_latent_length,
            height // s,
            width // s,
        )
        return video, (1, self.preset.audio_latent_length, cfg.fusion.audio.in_dim)

    def prepare_latents(
        self, seed: int, height: int, width: int, noise: NoiseMode | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial noise: video [1, 48, F, H/16, W/16] then audio [1, La, 20] (`draw_noise`;
        `noise` None: `runtime.noise`)."""
        video_shape, audio_shape = self.latent_shapes(height, width)
        mode = noise or self.runtime.noise
        return draw_noise(mode, seed, video_shape, audio_shape, self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """Normalised first-frame latent [1, 48, 1, H/16, W/16]."""
        pixels = preprocess_image(image, self.preset.video_area)  # [1, 3, H, W] in [-1, 1]
        if tuple(pixels.shape[-2:]) != (height, width):
            raise ValueError(
                f"image preprocessed to {tuple(pixels.shape[-2:])}, expected {(height, width)}"
            )
        with self._on_device(self.video_vae):  # the pixels in the pipeline dtype, as the
            # official engine hands them over; the VAE computes in its own (float32) dtype
            latent = self.video_vae.encode_image(pixels.to(self.device, self.dtype))
        return latent.to(self.device, self.dtype)

    @torch.no_grad()
    def decode(
        self, video: torch.Tensor, audio: torch.Tensor, timings: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Latents to uint8 frames and a waveform; `timings` gets `vae_decode` and
        `audio_decode` seconds (each ends with a copy to the host, so it includes the device)."""
        clock = time.perf_counter()
        with self._on_device(self.video_vae):  # 8-bit frames piece by piece, straight to host
            latent = video.to(self.dtype)
            if self.parallel is None:
                frames = self.video_vae.decode_uint8(latent, device="cpu")
            else:  # rows split over the ranks, gathered
                from .modules.video_vae import to_uint8

                pixels = self.parallel.decode_video(self.video_vae, latent)  # [1, 3, T, H, W]
                frames = to_uint8(pixels).permute(0, 2, 3, 4, 1).cpu()
        frames_np = frames[0].numpy()  # [T, H, W, 3]
        vae_done = time.perf_counter()
        with self._on_device(self.audio_vae), self._on_device(self.vocoder):
            mel = self.audio_vae.decode(audio.float().transpose(1, 2))  # [1, 80, 2*La]
            waveform = self.vocoder(mel)  # [1, 1, samples]
        waveform_np = waveform[0, 0].float().cpu().numpy()
        if timings is not None:
            timings["vae_decode"] = vae_done - clock
            timings["audio_decode"] = time.perf_counter() - vae_done
        return frames_np, waveform_np

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        image: Image.Image | None = None,
        *,
        params: SamplingParams | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        **overrides: Any,
    ) -> OviOutput:
        """Generate one clip with `params` (default: the variant's, `preset.sampling`), any
        `SamplingParams` field given as a keyword replacing its value (`None`: keep it)."""
        params = (params or self.preset.sampling).replace(**overrides)
        # 1. inputs and size
        self.check_inputs(prompt, params)
        seed = secrets.randbelow(MAX_SEED + 1) if params.seed is None else params.seed
        if self.parallel is not None:
            seed = self.parallel.shared_seed(seed)
        height, width = self.resolve_size(image, params)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        # 2. prompts
        prompt = self.format_prompt(prompt)
        text_pos, text_vneg, text_aneg = self.encode_prompt(
            prompt, params.video_negative_prompt, params.audio_negative_prompt
        )
        timings["text_encode"] = time.perf_counter() - clock
        # 3. latents
        clock = time.perf_counter()
        first_frame = self.encode_image(image, height, width) if image is not None else None
        video, audio = self.prepare_latents(seed, height, width, params.noise)
        timings["image_encode"] = time.perf_counter() - clock
        # 4. denoise
        clock = time.perf_counter()
        forwards = ForwardCount()
        if (
            self.fast_path is not None
            and self.fast_path.attention_by_shape
            and self.device.type == "cuda"
            and self.parallel is None
        ):  # the attention backend per shape of this clip, timed once per shape
            choose_clip_attention(self.fusion, video, audio)
        with self._on_device(self.fusion), self.fusion.clip():  # clip cache: RoPE, text K/V
            video, audio = denoise(
                self.fusion if self.parallel is None else self.parallel.wrap(self.fusion),
                video, audio, text_pos, text_vneg, text_aneg, params,
                first_frame_latent=first_frame, callback=callback, should_cancel=should_cancel,
                batch_cfg=self.parallel is not None
                or (self.fast_path is not None and self.fast_path.batch_cfg),
                cache_threshold=self.runtime.cache_threshold or None, forwards=forwards,
            )  # fmt: skip
        timings["denoise"] = time.perf_counter() - clock
        if forwards.skipped:
            logger.info(
                "step cache: %d DiT forwards run, %d skipped", forwards.run, forwards.skipped
            )
        # 5. decode
        clock = time.perf_counter()
        frames, waveform = self.decode(video, audio, timings)
        timings["decode"] = time.perf_counter() - clock
        return OviOutput(
            video=frames, audio=waveform, seed=seed, height=height, width=width,
            prompt=prompt, timings=timings, metrics=forwards.as_metrics(),
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------
    # memory

    @contextlib.contextmanager
    def adapters(self, specs: Sequence[LoraSpec], fast: bool = False) -> Iterator[None]:
        """Per-request LoRAs, unmerged (`model.lora.attach_loras`), for the clips run inside:
        each file is read and checked on first use and kept attached (up to `MAX_ADAPTERS`
        files, the least recently used dropped; a changed file is read again), switched on at
        its strength here and off after, so requests switch LoRAs without reloading.
        `fast` adds the few-step mode's FastWan LoRA (`fast_lora`) at strength 1.
        The adapters wrap the q/k/v linears, so fused projections are unfused on first use;
        8-bit block linears and multi-rank clips cannot carry them (LoraError)."""
        specs = list(specs)
        if fast and self.fast_lora is not None:
            if not self.fast_lora.is_file():
                raise LoraError(
                    f"the few-step mode's FastWan LoRA is missing ({self.fast_lora}): fetch it"
                    f" with `{self.fast_lora_hint}`"
                )
            specs.append(LoraSpec(str(self.fast_lora)))
        if not specs:
            yield
            return
        if self.runtime.quantize != "none" or self.parallel is not None:
            raise LoraError(
                "per-request LoRAs need a single-process worker with unquantised DiT linears"
                " (quantize none, no --sp/--cfg-parallel); merge them at load with --lora instead"
            )
        if projections_fused(self.fusion):
            unfuse_projections(self.fusion)
        scales: dict[str, float] = {}
        for spec in specs:
            path = Path(spec.path)
            if not path.is_file():
                raise LoraError(f"LoRA file not found: {path}")
            stat = path.stat()
            name, version = str(path.resolve()), (stat.st_mtime_ns, stat.st_size)
            if self._adapters.get(name) != version:
                lora = load_lora(path, self.fusion)  # every error before the model changes
                detach_lora(self.fusion, name)
                attach_loras(self.fusion, {name: lora})
                logger.info("LoRA %s attached (unmerged) to %s", path, lora.towers)
            self._adapters.pop(name, None)
            self._adapters[name] = version  # most recently used last
            scales[name] = scales.get(name, 0.0) + spec.scale
        for name in [n for n in self._adapters if n not in scales][
            : max(0, len(self._adapters) - MAX_ADAPTERS)
        ]:
            detach_lora(self.fusion, name)
            del self._adapters[name]
        set_lora_scales(self.fusion, scales)
        try:
            yield
        finally:
            set_lora_scales(self.fusion, {})

    @contextlib.contextmanager
    def _on_device(self, module: nn.Module) -> Iterator[None]:
        """An offloaded component visits the compute device while it runs (`visit_device`);
        others stay put. A block-offloaded DiT is never moved whole: its `BlockOffload`
        streams the layers."""
        if not any(module is m for m in self._offloaded) or (
            module is self.fusion and self.fusion.offload is not None
        ):
            yield
            return
        with visit_device(module, self.device):
            yield


def load_pipeline(
    source: ModelSource | str,
    runtime: RuntimeOptions | None = None,
    device: str | None = None,
) -> OviPipeline:
    """The pipeline for `source` (a `ModelSource`, or a variant or preset name) with `runtime`;
    `device` overrides `runtime.device` (the server gives each worker its own GPU). The one
    loader of the CLI and the server's workers."""
    if isinstance(source, str):
        source = ModelSource(source)
    runtime = (runtime or RuntimeOptions()).replace(device=device)
    if get_preset(source.name).random_weights:
        return OviPipeline.from_preset(source.name, runtime=runtime)
    return OviPipeline.from_pretrained(
        source.weights_dir or DEFAULT_WEIGHTS_DIR, source.name, runtime=runtime
    )
