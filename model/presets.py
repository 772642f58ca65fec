"""Named model variants: architecture, latent lengths, target area, prompt style, files, defaults.

`720x720_5s` is Ovi 1.0; `960x960_5s` and `960x960_10s` are Ovi 1.1. `tiny` has random weights,
tiny widths and a low resolution, but the real 5 s latent lengths, so it exercises every code
path (121 frames at 24 fps, 5.04 s of 16 kHz audio) in seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

VIDEO_FPS = 24
AUDIO_SAMPLE_RATE = 16000

DEFAULT_VIDEO_NEGATIVE_PROMPT = "jitter, bad hands, blur, distortion"
DEFAULT_AUDIO_NEGATIVE_PROMPT = "robotic, muffled, echo, distorted"

Solver = Literal["unipc", "dpm++", "euler"]
SOLVERS: tuple[str, ...] = ("unipc", "dpm++", "euler")


@dataclass(frozen=True)
class SamplingDefaults:
    """The official release's sampling settings (`inference_fusion.yaml`)."""

    steps: int = 50
    solver: Solver = "unipc"
    shift: float = 5.0
    video_guidance_scale: float = 4.0
    audio_guidance_scale: float = 3.0
    slg_layer: int = 11  # block skipped in the negative pass; -1 disables skip-layer guidance
    video_negative_prompt: str = DEFAULT_VIDEO_NEGATIVE_PROMPT
    audio_negative_prompt: str = DEFAULT_AUDIO_NEGATIVE_PROMPT
    height: int = 512  # t2v request size before snapping to the variant's area
    width: int = 992


@dataclass(frozen=True)
class Preset:
    name: str
    config: OviConfig
    video_latent_length: int  # latent frames; pixels = 4 * (n - 1) + 1
    audio_latent_length: int  # audio latent steps; samples = 2 * n * hop (hop 256)
    video_area: int  # target H*W in pixels
    prompt_style: Literal["audcap", "audio_colon"]  # 1.0: <AUDCAP>..<ENDAUDCAP>; 1.1: "Audio: .."
    fusion_file: str | None  # manifest key of the fusion weights; None = random weights (tiny)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    description: str = ""

    @property
    def num_frames(self) -> int:
        return 4 * (self.video_latent_length - 1) + 1

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


PRESETS: dict[str, Preset] = {
    "720x720_5s": Preset(
        name="720x720_5s",
        config=OviConfig(),
        video_latent_length=31,
        audio_latent_length=157,
        video_area=720 * 720,
        prompt_style="audcap",
        fusion_file="fusion_720x720_5s",
        description="Ovi 1.0: 5 s clips around 720x720",
    ),
    "960x960_5s": Preset(
        name="960x960_5s",
        config=OviConfig(),
        video_latent_length=31,
        audio_latent_length=157,
        video_area=960 * 960,
        prompt_style="audio_colon",
        fusion_file="fusion_960x960_5s",
        description="Ovi 1.1: 5 s clips around 960x960",
    ),
    "960x960_10s": Preset(
        name="960x960_10s",
        config=OviConfig(),
        video_latent_length=61,
        audio_latent_length=314,
        video_area=960 * 960,
        prompt_style="audio_colon",
        fusion_file="fusion_960x960_10s",
        description="Ovi 1.1: 10 s clips around 960x960",
    ),
    "tiny": Preset(
        name="tiny",
        config=_tiny_config(),
        video_latent_length=31,
        audio_latent_length=157,
        video_area=64 * 64,
        prompt_style="audio_colon",
        fusion_file=None,
        sampling=SamplingDefaults(steps=4, slg_layer=1, height=64, width=64),
        description="random weights, tiny widths, 64x64: tests and demos on CPU",
    ),
}

DEFAULT_VARIANT = "720x720_5s"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(PRESETS)}") from None
