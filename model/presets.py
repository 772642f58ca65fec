"""Named model variants: architecture, latent lengths, target area, prompt style, files, defaults.

`720x720_5s` is Ovi 1.0; `960x960_5s` and `960x960_10s` are Ovi 1.1. `tiny` has random weights,
tiny widths and a low resolution, but the real 5 s latent lengths, so it exercises every code
path (121 frames at 24 fps, 5.04 s of 16 kHz audio) in seconds on a CPU; `tiny_1s` is the same
model at about 1 s (25 frames), for the tests that do not need the real length.

The sampling defaults of each variant are a `SamplingParams` (`model/sampling.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from .config import (
    AudioVAEConfig,
    FusionConfig,
    OviConfig,
    T5Config,
    TowerConfig,
    VocoderConfig,
    WanVAEConfig,
)
from .sampling import SamplingParams

VIDEO_FPS = 24
AUDIO_SAMPLE_RATE = 16000

PromptStyle = Literal["audcap", "audio_colon"]  # 1.0: <AUDCAP>..<ENDAUDCAP>; 1.1: "Audio: .."


@dataclass(frozen=True)
class Preset:
    name: str
    config: OviConfig
    video_latent_length: int  # latent frames; pixels = 4 * (n - 1) + 1
    audio_latent_length: int  # audio latent steps; samples = 2 * n * hop (hop 256)
    video_area: int  # target H*W in pixels
    prompt_style: PromptStyle
    fusion_file: str | None  # manifest key of the fusion weights; None = random weights (tiny)
    sampling: SamplingParams = field(default_factory=SamplingParams)  # this variant's defaults
    description: str = ""

    @property
    def num_frames(self) -> int:
        """Pixel frames: the causal VAE decodes the first latent frame to one frame, each
        later one to `temporal_compression` frames."""
        return self.config.video_vae.temporal_compression * (self.video_latent_length - 1) + 1

    @property
    def audio_samples(self) -> int:
        """Waveform samples: the audio VAE's 2x upsampling to mels, then the vocoder's hop."""
        return 2 * self.audio_latent_length * self.config.vocoder.hop_length

    @property
    def random_weights(self) -> bool:
        return self.fusion_file is None


def _tiny_config() -> OviConfig:
    tower = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=3, text_len=32, text_dim=32)
    return OviConfig(
        fusion=FusionConfig(
            video=TowerConfig(modality="video", **tower),
            audio=TowerConfig(
                modality="audio",
                in_dim=20,
                out_dim=20,
                patch_size=(1,),
                rope_scale=0.19676,
                **tower,
            ),
        ),
        t5=T5Config(
            vocab=64, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, text_len=32
        ),
        video_vae=WanVAEConfig(dim=8, dec_dim=12, num_res_blocks=1),
        audio_vae=AudioVAEConfig(hidden_dim=16),
        vocoder=VocoderConfig(upsample_initial_channel=64),
    )


# Latent lengths (video frames, audio steps) of the released clip lengths.
FIVE_SECONDS = (31, 157)  # 121 frames at 24 fps, 5.02 s of 16 kHz audio
TEN_SECONDS = (61, 314)  # 241 frames, 10.05 s


# The official t2v default size (height, width) per release: the 1.1 inference config asks for
# 704x1280; the 1.0 config (and the official gradio app) for 512x992. Snapped to the area.
T2V_SIZE_1_0 = (512, 992)
T2V_SIZE_1_1 = (704, 1280)


def _released(
    name: str,
    lengths: tuple[int, int],
    side: int,
    style: PromptStyle,
    description: str,
    t2v_size: tuple[int, int] = T2V_SIZE_1_1,
) -> Preset:
    return Preset(
        name=name,
        config=OviConfig(),
        video_latent_length=lengths[0],
        audio_latent_length=lengths[1],
        video_area=side * side,
        prompt_style=style,
        fusion_file=f"fusion_{name}",
        sampling=SamplingParams(height=t2v_size[0], width=t2v_size[1]),
        description=description,
    )


_TINY = Preset(
    name="tiny",
    config=_tiny_config(),
    video_latent_length=FIVE_SECONDS[0],
    audio_latent_length=FIVE_SECONDS[1],
    video_area=64 * 64,
    prompt_style="audio_colon",
    fusion_file=None,
    sampling=SamplingParams(steps=4, slg_layer=1, height=64, width=64),
    description="random weights, tiny widths, 64x64: tests and demos on CPU",
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        _released(
            "720x720_5s",
            FIVE_SECONDS,
            720,
            "audcap",
            "Ovi 1.0: 5 s clips around 720x720",
            t2v_size=T2V_SIZE_1_0,
        ),
        _released(
            "960x960_5s", FIVE_SECONDS, 960, "audio_colon", "Ovi 1.1: 5 s clips around 960x960"
        ),
        _released(
            "960x960_10s", TEN_SECONDS, 960, "audio_colon", "Ovi 1.1: 10 s clips around 960x960"
        ),
        _TINY,
        # about 1 s (25 frames, 33 audio steps: the 5 s ratio), for tests of behaviour
        replace(
            _TINY,
            name="tiny_1s",
            video_latent_length=7,
            audio_latent_length=33,
            description="the tiny preset at 1 s (25 frames): fast tests on CPU",
        ),
    )
}

DEFAULT_VARIANT = "720x720_5s"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(PRESETS)}") from None


# The few-step mode (`RuntimeOptions.fast`), as Wan2GP runs Ovi with the FastWan LoRA on the
# video tower: 6 steps (10 for the 10 s variants), guidance 1 on both towers (so the negative
# pass is skipped entirely), shift 6.
FAST_STEPS = 6
FAST_STEPS_10S = 10
FAST_SHIFT = 6.0


def fast_sampling(params: SamplingParams, preset: Preset) -> SamplingParams:
    """`params` in the few-step mode for `preset`'s length: 6 steps (10 for 10 s), guidance 1
    on both towers, shift 6 (prompts, seed and size kept)."""
    steps = FAST_STEPS_10S if preset.video_latent_length >= TEN_SECONDS[0] else FAST_STEPS
    return params.replace(
        steps=steps, video_guidance_scale=1.0, audio_guidance_scale=1.0, shift=FAST_SHIFT
    )


def fast_preset(preset: Preset) -> Preset:
    """`preset` with the few-step sampling defaults (the LoRA is merged by the pipeline)."""
    return replace(preset, sampling=fast_sampling(preset.sampling, preset))
