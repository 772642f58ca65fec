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

Seeds: the initial noise is drawn from a CPU `torch.Generator` seeded with `seed` (video noise
first, then audio noise), in float32, whatever the compute device. The same seed and settings
therefore give the same starting latents everywhere, and the same video on the same hardware
and software; GPU kernels may differ across GPU models.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

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
from .modules.fusion import FusionModel
from .modules.text_encoder import TextEncoder, build_tiny_tokenizer
from .optimize import FastPath, optimize_pipeline, resolve_fast_path
from .preprocess import (
    area_mismatch,
    image_target_size,
    preprocess_image,
    snap_hw_to_multiple_of_32,
)
from .presets import AUDIO_SAMPLE_RATE, SOLVERS, VIDEO_FPS, Preset, get_preset
from .schedulers import make_scheduler
from .text import format_prompt
from .weights import inner_key, resolve_files

logger = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1  # fits every client's integer type (JS numbers included)


class GenerationCancelled(Exception):
    """Raised between denoising steps when `should_cancel()` returned True."""


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based: steps done so far
    total: int
    elapsed: float  # seconds since the denoising loop started


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

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class DenoiseTrace:
    """What one step of `denoise` saw and produced (for conformance and debugging)."""

    step: int
    timestep: torch.Tensor
    video_in: torch.Tensor
    audio_in: torch.Tensor
    pred_video_pos: torch.Tensor
    pred_video_neg: torch.Tensor
    pred_audio_pos: torch.Tensor
    pred_audio_neg: torch.Tensor


def denoise(
    fusion: FusionModel,
    video: torch.Tensor,
    audio: torch.Tensor,
    text_pos: torch.Tensor,
    text_video_neg: torch.Tensor,
    text_audio_neg: torch.Tensor,
    *,
    steps: int,
    solver: str,
    shift: float,
    video_guidance_scale: float,
    audio_guidance_scale: float,
    slg_layer: int,
    first_frame_latent: torch.Tensor | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    trace: Callable[[DenoiseTrace], None] | None = None,
    batch_cfg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling loop. Returns the final (video [B,48,F,h,w], audio [B,La,20]) latents.

    video: initial noise [B, 48, F, h, w]; audio: initial noise [B, La, 20];
    text_*: [B, Lt, Dt] (each padded with zeros to the model's text_len inside the model);
    first_frame_latent: [B, 48, 1, h, w] for i2v (written into frame 0 before every pass and
    once after the loop), None for t2v.
    batch_cfg: run both passes as one batch (`FusionModel.forward_cfg`; equal to rounding).
    """
    video_scheduler = make_scheduler(solver, steps, shift)
    audio_scheduler = make_scheduler(solver, steps, shift)
    is_i2v = first_frame_latent is not None
    skip = slg_layer if slg_layer is not None and slg_layer > 0 else None
    batch = video.shape[0]
    start = time.perf_counter()
    timesteps = video_scheduler.timesteps.to(video.device)  # once: no host->device copy per step
    for i, t in enumerate(video_scheduler.timesteps):
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(f"cancelled before step {i + 1}/{steps}")
        if is_i2v:
            video = torch.cat([first_frame_latent.to(video.dtype), video[:, :, 1:]], dim=2)
        t_model = timesteps[i].reshape(1).expand(batch)
        if batch_cfg:
            pos_v, pos_a, neg_v, neg_a = fusion.forward_cfg(
                video, audio, t_model, (text_pos, text_pos), (text_video_neg, text_audio_neg),
                first_frame_is_clean=is_i2v, slg_layer=skip,
            )  # fmt: skip
        else:
            pos_v, pos_a = fusion(
                video, audio, t_model, text_pos, text_pos, first_frame_is_clean=is_i2v,
                slg_layer=None,
            )  # fmt: skip
            neg_v, neg_a = fusion(
                video, audio, t_model, text_video_neg, text_audio_neg, first_frame_is_clean=is_i2v,
                slg_layer=skip,
            )  # fmt: skip
        if trace is not None:
            trace(DenoiseTrace(i, t, video, audio, pos_v, neg_v, pos_a, neg_a))
        guided_v = neg_v + video_guidance_scale * (pos_v - neg_v)
        guided_a = neg_a + audio_guidance_scale * (pos_a - neg_a)
        video = video_scheduler.step(guided_v, t, video)
        audio = audio_scheduler.step(guided_a, t, audio)
        if callback is not None:
            callback(StepInfo(i + 1, steps, time.perf_counter() - start))
    if is_i2v:
        video = torch.cat([first_frame_latent.to(video.dtype), video[:, :, 1:]], dim=2)
    return video, audio


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class OviPipeline:
    """Text (+ image) to video with audio. Build with `from_pretrained` or `from_preset`."""

    def __init__(
        self,
        preset: Preset,
        text_encoder: TextEncoder,
        fusion: FusionModel,
        video_vae: nn.Module,
        audio_vae: nn.Module,
        vocoder: nn.Module,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cpu_offload: bool = False,
        offload_text_encoder: bool = False,
        fast_path: bool | FastPath | None = None,
        batch_cfg: bool = False,
        block_offload: bool = False,
        fp8_compute: bool = False,
    ) -> None:
        """cpu_offload: every component stays in host memory and visits the device while it
        runs. offload_text_encoder: the same for umT5 alone (the other components stay on the
        device), for cards that cannot hold all of them (see the README's memory table).

        fast_path: `model/optimize.py`'s transforms; None = on for CUDA, off on CPU (the
        plain float32 path conformance checks); True/False or a `FastPath` to choose.

        batch_cfg: both CFG passes as one batch. block_offload: the fusion DiT's layers stay in
        (pinned) host memory and stream to the device one layer ahead; only its non-block
        weights and two layer slots live on the device, and the other components use
        component offload (`cpu_offload`). fp8_compute: the block linears as float8
        `torch._scaled_mm` (CUDA only: a ValueError elsewhere). Each switches the matching
        `FastPath` field on (see `resolve_fast_path`)."""
        self.preset = preset
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.video_vae = video_vae
        self.audio_vae = audio_vae
        self.vocoder = vocoder
        self.device = torch.device(device) if device is not None else _default_device()
        # bf16 on GPU as the official release; fp32 on CPU (bf16 matmuls are slow there).
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        config = resolve_fast_path(
            fast_path, self.device, batch_cfg=batch_cfg, block_offload=block_offload,
            fp8_compute=fp8_compute,
        )  # fmt: skip
        # block offload: the DiT stays on the host (BlockOffload places it), the rest offloads
        self.cpu_offload = cpu_offload or (config is not None and config.block_offload)
        components = [text_encoder, fusion, video_vae, audio_vae, vocoder]
        # the components that live in host memory and visit the device (`_on_device`)
        self._offloaded = (
            components if self.cpu_offload else [text_encoder] if offload_text_encoder else []
        )
        for module in components:
            offloaded = any(module is m for m in self._offloaded)
            module.to(torch.device("cpu") if offloaded else self.device).eval()
        self.fast_path = optimize_pipeline(self, config if config is not None else False)

    # ----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_pretrained(
        cls,
        weights_dir: str | Path,
        variant: str = "720x720_5s",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cpu_offload: bool = False,
        offload_text_encoder: bool = False,
        fp8: bool = False,
        fast_path: bool | FastPath | None = None,
        batch_cfg: bool = False,
        block_offload: bool = False,
        fp8_compute: bool = False,
    ) -> OviPipeline:
        """Load a real variant from `weights_dir` (the layout `make weights` creates).

        `fp8` loads the float8_e4m3fn fusion file (half the disk and host memory); it is
        computed in bf16 unless `fp8_compute`. `cpu_offload`, `offload_text_encoder`,
        `batch_cfg`, `block_offload`, `fp8_compute`: see `__init__`. A missing file raises
        `WeightFileMissingError` naming it and the command that fetches it.
        """
        preset = get_preset(variant)
        if preset.random_weights:
            raise ValueError(f"preset {variant!r} has random weights: use OviPipeline.from_preset")
        device = torch.device(device) if device is not None else _default_device()
        modes = dict(batch_cfg=batch_cfg, block_offload=block_offload, fp8_compute=fp8_compute)
        config = resolve_fast_path(fast_path, device, **modes)  # bad ones fail before loading
        files = resolve_files(weights_dir, variant, fp8=fp8)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        to_host = cpu_offload or (config is not None and config.block_offload)
        load_to = torch.device("cpu") if to_host else device
        cfg = preset.config

        def read(role: str) -> dict[str, torch.Tensor]:
            return read_checkpoint(files[role], inner_key=inner_key(role))

        logger.info("loading %s from %s", variant, weights_dir)
        t5_to = torch.device("cpu") if offload_text_encoder else load_to
        text_encoder = TextEncoder(
            load_t5(read("t5"), cfg.t5, source=str(files["t5"]), dtype=dtype, device=t5_to),
            tokenizer_dir=files["tokenizer"],
            text_len=cfg.t5.text_len,
        )
        fusion = load_fusion(
            read("fusion"), cfg.fusion, source=str(files["fusion"]), dtype=dtype, device=load_to
        )
        video_vae = load_wan_vae(
            read("video_vae"),
            cfg.video_vae,
            source=str(files["video_vae"]),
            dtype=dtype,
            device=load_to,
        )
        # The audio path is small and runs in fp32 (its weight-norm folds are fp32 anyway).
        audio_vae = load_audio_vae(
            read("audio_vae"), cfg.audio_vae, source=str(files["audio_vae"]), device=load_to
        )
        vocoder = load_vocoder(
            read("vocoder"), cfg.vocoder, source=str(files["vocoder"]), device=load_to
        )
        return cls(
            preset, text_encoder, fusion, video_vae, audio_vae, vocoder,
            device=device, dtype=dtype, cpu_offload=cpu_offload,
            offload_text_encoder=offload_text_encoder, fast_path=fast_path, **modes,
        )  # fmt: skip

    @classmethod
    def from_preset(
        cls,
        name: str = "tiny",
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        fast_path: bool | FastPath | None = None,
        batch_cfg: bool = False,
        block_offload: bool = False,
        fp8_compute: bool = False,
    ) -> OviPipeline:
        """Build a random-weight preset (e.g. `tiny`) through the same load paths as real files.

        `batch_cfg`, `block_offload`, `fp8_compute`: see `__init__`."""
        preset = get_preset(name)
        if not preset.random_weights:
            raise ValueError(
                f"preset {name!r} needs its weight files: use OviPipeline.from_pretrained(weights_dir, variant={name!r})"
            )
        device = torch.device(device) if device is not None else torch.device("cpu")
        modes = dict(batch_cfg=batch_cfg, block_offload=block_offload, fp8_compute=fp8_compute)
        resolve_fast_path(fast_path, device, **modes)  # bad combinations fail before building
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        cfg = preset.config
        with tempfile.TemporaryDirectory(prefix="ovi-tiny-tokenizer-") as tokenizer_dir:
            build_tiny_tokenizer(Path(tokenizer_dir), cfg.t5.vocab)  # loaded eagerly below
            text_encoder = TextEncoder(
                load_t5(
                    random_t5_state(cfg.t5, seed),
                    cfg.t5,
                    source="random",
                    dtype=dtype,
                    device=device,
                ),
                tokenizer_dir=tokenizer_dir,
                text_len=cfg.t5.text_len,
            )
        fusion = load_fusion(
            random_fusion_state(cfg.fusion, seed + 1),
            cfg.fusion,
            source="random",
            dtype=dtype,
            device=device,
        )
        video_vae = load_wan_vae(
            random_wan_vae_state(cfg.video_vae, seed + 2),
            cfg.video_vae,
            source="random",
            dtype=dtype,
            device=device,
        )
        audio_vae = load_audio_vae(
            random_audio_vae_state(cfg.audio_vae, seed + 3),
            cfg.audio_vae,
            source="random",
            device=device,
        )
        vocoder = load_vocoder(
            random_vocoder_state(cfg.vocoder, seed + 4), cfg.vocoder, source="random", device=device
        )
        return cls(
            preset, text_encoder, fusion, video_vae, audio_vae, vocoder, device=device, dtype=dtype,
            fast_path=fast_path, **modes,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------
    # the recipe

    def check_inputs(
        self,
        prompt: str,
        *,
        steps: int,
        solver: str,
        shift: float,
        slg_layer: int,
        height: int | None,
        width: int | None,
        seed: int | None,
    ) -> None:
        """Raise ValueError naming the first bad value."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise ValueError(f"steps must be an integer in 1..1000, got {steps!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift!r}")
        num_layers = self.preset.config.fusion.video.num_layers
        if slg_layer is not None and not -1 <= slg_layer < num_layers:
            raise ValueError(
                f"slg_layer must be in -1..{num_layers - 1} (-1 = off), got {slg_layer}"
            )
        for name, value in (("height", height), ("width", width)):
            if value is not None and not 32 <= value <= 4096:
                raise ValueError(f"{name} must be in 32..4096 pixels, got {value}")
        if seed is not None and not 0 <= seed <= 2**63 - 1:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")

    def resolve_size(
        self, image: Image.Image | None, height: int | None, width: int | None
    ) -> tuple[int, int]:
        """(H, W) in pixels: i2v from the image's aspect ratio, t2v from the requested size."""
        area = self.preset.video_area
        if image is not None:
            return image_target_size(image.width, image.height, area)
        h = height or self.preset.sampling.height
        w = width or self.preset.sampling.width
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

    def prepare_latents(
        self, seed: int, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial noise: video [1, 48, F, H/16, W/16] then audio [1, La, 20], CPU generator."""
        cfg = self.preset.config.fusion
        generator = torch.Generator(device="cpu").manual_seed(seed)
        video_shape = (
            1,
            cfg.video.in_dim,
            self.preset.video_latent_length,
            height // 16,
            width // 16,
        )
        audio_shape = (1, self.preset.audio_latent_length, cfg.audio.in_dim)
        video = torch.randn(video_shape, generator=generator, dtype=torch.float32)
        audio = torch.randn(audio_shape, generator=generator, dtype=torch.float32)
        return video.to(self.device, self.dtype), audio.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """Normalised first-frame latent [1, 48, 1, H/16, W/16]."""
        pixels = preprocess_image(image, self.preset.video_area)  # [1, 3, H, W] in [-1, 1]
        if tuple(pixels.shape[-2:]) != (height, width):
            raise ValueError(
                f"image preprocessed to {tuple(pixels.shape[-2:])}, expected {(height, width)}"
            )
        with self._on_device(self.video_vae):
            latent = self.video_vae.encode_image(pixels.to(self.device, self.dtype))
        return latent.to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with self._on_device(self.video_vae):
            pixels = self.video_vae.decode(video.to(self.dtype))  # [1, 3, T, H, W] in [-1, 1]
        frames = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames_np = frames.permute(1, 2, 3, 0).cpu().numpy()  # [T, H, W, 3]
        with self._on_device(self.audio_vae), self._on_device(self.vocoder):
            mel = self.audio_vae.decode(audio.float().transpose(1, 2))  # [1, 80, 2*La]
            waveform = self.vocoder(mel)  # [1, 1, samples]
        return frames_np, waveform[0, 0].float().cpu().numpy()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        image: Image.Image | None = None,
        *,
        negative_prompt: str | None = None,
        audio_negative_prompt: str | None = None,
        steps: int | None = None,
        seed: int | None = None,
        solver: str | None = None,
        shift: float | None = None,
        video_guidance_scale: float | None = None,
        audio_guidance_scale: float | None = None,
        slg_layer: int | None = None,
        height: int | None = None,
        width: int | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> OviOutput:
        """Generate one clip. Every `None` takes the variant's default (`preset.sampling`)."""
        d = self.preset.sampling
        steps = d.steps if steps is None else steps
        solver = d.solver if solver is None else solver
        shift = d.shift if shift is None else shift
        slg_layer = d.slg_layer if slg_layer is None else slg_layer
        # 1. inputs and size
        self.check_inputs(
            prompt, steps=steps, solver=solver, shift=shift, slg_layer=slg_layer,
            height=height, width=width, seed=seed,
        )  # fmt: skip
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        height, width = self.resolve_size(image, height, width)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        # 2. prompts
        prompt = self.format_prompt(prompt)
        text_pos, text_vneg, text_aneg = self.encode_prompt(
            prompt,
            d.video_negative_prompt if negative_prompt is None else negative_prompt,
            d.audio_negative_prompt if audio_negative_prompt is None else audio_negative_prompt,
        )
        timings["text_encode"] = time.perf_counter() - clock
        # 3. latents
        clock = time.perf_counter()
        first_frame = self.encode_image(image, height, width) if image is not None else None
        video, audio = self.prepare_latents(seed, height, width)
        timings["image_encode"] = time.perf_counter() - clock
        # 4. denoise
        clock = time.perf_counter()
        with self._on_device(self.fusion):
            video, audio = denoise(
                self.fusion, video, audio, text_pos, text_vneg, text_aneg,
                steps=steps, solver=solver, shift=shift,
                video_guidance_scale=d.video_guidance_scale if video_guidance_scale is None else video_guidance_scale,
                audio_guidance_scale=d.audio_guidance_scale if audio_guidance_scale is None else audio_guidance_scale,
                slg_layer=slg_layer, first_frame_latent=first_frame,
                callback=callback, should_cancel=should_cancel,
                batch_cfg=self.fast_path is not None and self.fast_path.batch_cfg,
            )  # fmt: skip
        timings["denoise"] = time.perf_counter() - clock
        # 5. decode
        clock = time.perf_counter()
        frames, waveform = self.decode(video, audio)
        timings["decode"] = time.perf_counter() - clock
        return OviOutput(
            video=frames, audio=waveform, seed=seed, height=height, width=width,
            prompt=prompt, timings=timings,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------
    # memory

    @contextlib.contextmanager
    def _on_device(self, module: nn.Module) -> Iterator[None]:
        """An offloaded component visits the compute device while it runs; others stay put.

        The host tensors are kept and only read: each visit copies them in, and afterwards the
        parameters point back at them, so the device copies are freed with no copy back (the
        weights never change). A block-offloaded DiT is never moved whole: its `BlockOffload`
        streams the layers."""
        if not any(module is m for m in self._offloaded) or (
            module is self.fusion and self.fusion.offload is not None
        ):
            yield
            return
        tensors = [*module.parameters(), *module.buffers()]
        host = [t.data for t in tensors]
        for t, h in zip(tensors, host, strict=True):
            t.data = h.to(self.device)
        try:
            yield
        finally:
            for t, h in zip(tensors, host, strict=True):
                t.data = h
