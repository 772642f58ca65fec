"""Architecture configs for every network Ovi runs.

Frozen dataclasses, one per network; defaults are the real full-size models. Named variants
(sizes, latent lengths, file names, sampling defaults) live in `model/presets.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# The 48 per-channel latent statistics of the Wan2.2 VAE (constants of the official code, not
# stored in `Wan2.2_VAE.pth`). Latents the DiT sees are (mu - mean) / std.
WAN22_LATENTS_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


@dataclass(frozen=True)
class TowerConfig:
    """One Wan-style DiT tower (video `ti2v` or audio `t2a`) of the fusion model."""

    modality: Literal["video", "audio"] = "video"
    dim: int = 3072
    ffn_dim: int = 14336
    freq_dim: int = 256  # sinusoidal timestep features
    num_heads: int = 24
    num_layers: int = 30
    text_len: int = 512  # context is zero-padded to this many rows, and all of them are attended
    text_dim: int = 4096
    in_dim: int = 48
    out_dim: int = 48
    patch_size: tuple[int, ...] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_scale: float = 1.0  # audio: temporal_rope_scaling_factor (0.19676)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_official(cls, cfg: dict[str, Any]) -> TowerConfig:
        """Build from an official `ovi/configs/model/dit/{video,audio}.json` dict."""
        modality = "audio" if cfg.get("model_type") == "t2a" else "video"
        return cls(
            modality=modality,
            dim=cfg["dim"],
            ffn_dim=cfg["ffn_dim"],
            freq_dim=cfg["freq_dim"],
            num_heads=cfg["num_heads"],
            num_layers=cfg["num_layers"],
            text_len=cfg["text_len"],
            text_dim=cfg["text_dim"],
            in_dim=cfg["in_dim"],
            out_dim=cfg["out_dim"],
            patch_size=tuple(cfg["patch_size"]),
            eps=cfg["eps"],
            qk_norm=cfg["qk_norm"],
            cross_attn_norm=cfg["cross_attn_norm"],
            rope_scale=cfg.get("temporal_rope_scaling_factor", 1.0),
        )


def _audio_tower() -> TowerConfig:
    return TowerConfig(modality="audio", in_dim=20, out_dim=20, patch_size=(1,), rope_scale=0.19676)


@dataclass(frozen=True)
class FusionConfig:
    """The twin-tower fusion DiT: both towers have the same depth and width."""

    video: TowerConfig = field(default_factory=TowerConfig)
    audio: TowerConfig = field(default_factory=_audio_tower)


@dataclass(frozen=True)
class T5Config:
    """umT5-XXL encoder (Wan's key layout; run with transformers' UMT5EncoderModel)."""

    vocab: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512  # tokenizer max length

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads

    @classmethod
    def from_official(cls, cfg: dict[str, Any], **overrides: Any) -> T5Config:
        """Build from the official `T5Encoder(vocab, dim, dim_attn, ...)` kwargs.

        umT5 gives every layer its own relative-position table (`shared_pos=False`); the shared
        variant (plain T5) has a different layout and is rejected.
        """
        if cfg.get("shared_pos", False):
            raise ValueError("shared_pos=True (one position table for all layers) is not umT5")
        fields = ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers", "num_buckets")
        return cls(**{name: cfg[name] for name in fields}, **overrides)


@dataclass(frozen=True)
class WanVAEConfig:
    """Wan2.2 video VAE (z_dim 48, 2x2 pixel patchify, 16x spatial / 4x temporal compression)."""

    dim: int = 160
    dec_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    patch_size: int = 2  # pixels are patchified 2x2 before the encoder: 3 RGB -> 12 channels
    latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN22_LATENTS_STD

    @property
    def in_channels(self) -> int:
        return 3 * self.patch_size**2

    @property
    def temporal_compression(self) -> int:
        """Pixel frames per latent frame after the first (causal): T = 1 + this * (F - 1)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent cell along H and W: patchify, then one 2x step per stage but the last."""
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_official(cls, cfg: dict[str, Any], **overrides: Any) -> WanVAEConfig:
        """Build from the official `WanVAE_(dim, dec_dim, z_dim, ...)` kwargs."""
        return cls(
            dim=cfg["dim"],
            dec_dim=cfg["dec_dim"],
            z_dim=cfg["z_dim"],
            dim_mult=tuple(cfg["dim_mult"]),
            num_res_blocks=cfg["num_res_blocks"],
            attn_scales=tuple(cfg.get("attn_scales", ())),
            temporal_downsample=tuple(cfg["temperal_downsample"]),  # sic, the official spelling
            **overrides,
        )


@dataclass(frozen=True)
class AudioVAEConfig:
    """MMAudio 16 kHz mel VAE (80 mels -> 20 latent channels, 2x temporal compression)."""

    data_dim: int = 80
    embed_dim: int = 20
    hidden_dim: int = 384
    channel_multipliers: tuple[int, ...] = (1, 2, 4)
    layers_per_block: int = 2  # encoder res blocks per level; the decoder has one more

    @classmethod
    def from_official(cls, cfg: dict[str, Any]) -> AudioVAEConfig:
        """Build from the official `VAE(data_dim=..., embed_dim=..., hidden_dim=...)` kwargs."""
        return cls(
            data_dim=cfg["data_dim"], embed_dim=cfg["embed_dim"], hidden_dim=cfg["hidden_dim"]
        )


@dataclass(frozen=True)
class VocoderConfig:
    """BigVGAN v1 16 kHz vocoder (hop 256)."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    snake_logscale: bool = True

    @classmethod
    def from_official(cls, cfg: dict[str, Any]) -> VocoderConfig:
        """Build from an official `bigvgan_vocoder.yml` dict (only AMP blocks + snake-beta exist)."""
        resblock, activation = str(cfg.get("resblock", "1")), cfg.get("activation", "snakebeta")
        if resblock != "1" or activation != "snakebeta":
            raise ValueError(
                f"unsupported BigVGAN variant: resblock={resblock!r}, activation={activation!r}"
                " (only resblock '1' with snakebeta)"
            )
        return cls(
            num_mels=cfg["num_mels"],
            upsample_rates=tuple(cfg["upsample_rates"]),
            upsample_kernel_sizes=tuple(cfg["upsample_kernel_sizes"]),
            upsample_initial_channel=cfg["upsample_initial_channel"],
            resblock_kernel_sizes=tuple(cfg["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(d) for d in cfg["resblock_dilation_sizes"]),
            snake_logscale=cfg.get("snake_logscale", True),
        )

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        return hop


@dataclass(frozen=True)
class OviConfig:
    """Every network of one Ovi model."""

    fusion: FusionConfig = field(default_factory=FusionConfig)
    t5: T5Config = field(default_factory=T5Config)
    video_vae: WanVAEConfig = field(default_factory=WanVAEConfig)
    audio_vae: AudioVAEConfig = field(default_factory=AudioVAEConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
