"""MMAudio checkpoints -> `AudioVAE` and `Vocoder`: key rules, load-time transforms, loaders.

Two official files, both loaded strictly:

* `ext_weights/v1-16.pth` (MMAudio VAE_16k): flat dict of RAW magnitude-preserving conv weights,
  two 0-dim `learnable_gain` scalars and the `data_mean`/`data_std` buffers [1, 80, 1].
  Rule: every key gets the prefix `vae.` (one anchored rule, no exceptions). Transform, after the
  strict check: each conv weight W [out, in, k] becomes W / (||W_o|| + 1e-4 * sqrt(in * k)) per
  output channel o, in float32 (MMAudio's load-time weight normalisation).
* `ext_weights/best_netG.pt`, under "generator" (BigVGAN v1 16 kHz): every conv is weight-normed.
  Its g / v pair comes in one of two spellings, accepted per conv and for those keys only:
  legacy `<conv>.weight_g` / `<conv>.weight_v`, or `<conv>.parametrizations.weight.original0` /
  `original1`. Handler: fold w = g * v / ||v|| (norm over every dim but 0; for the transposed
  convs `ups.i.0` dim 0 is the input-channel axis). The persistent Kaiser-sinc `filter` buffers,
  biases and snake alpha/beta load as stored.

Both loaders build on the meta device and assign, so `device="meta"` checks a full-size layout
without allocating it. `random_*_state` make official-format dicts for the random-weight `tiny`
preset; they go through the same loaders.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Literal

import torch
from diffusers.models.autoencoders.mmaudio_vocoder import (
    MMAudioLowPassFilter1d,
    MMAudioUpSample1d,
    kaiser_sinc_filter1d,
)
from torch import nn

from ..config import AudioVAEConfig, VocoderConfig
from ..loading import CheckpointFamily, StateDict, check_state_dict, expected_shapes
from ..modules.audio_vae import AudioVAE
from ..modules.vocoder import Vocoder

VOCODER_INNER_KEY = "generator"  # best_netG.pt keeps the generator's state dict under this key

# --- MMAudio VAE ---------------------------------------------------------------------------

VAE_PREFIX = "vae."  # official key K -> module key "vae." + K
MPCONV_EPS = 1e-4


def convert_audio_vae_state(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official `v1-16.pth` keys -> `AudioVAE` keys (rename only; values untouched)."""
    return {VAE_PREFIX + key: value for key, value in state.items()}


def audio_vae_file_layout(model: AudioVAE) -> dict[str, tuple[int, ...]]:
    """Keys and shapes a `v1-16.pth`-format dict must hold for `model`."""
    return {key.removeprefix(VAE_PREFIX): shape for key, shape in expected_shapes(model).items()}


def normalize_mpconv_weight(weight: torch.Tensor) -> torch.Tensor:
    """Raw MPConv weight [out, in, k] -> W / (||W_o|| + 1e-4 * sqrt(in * k)), in float32."""
    w = weight.float()
    fan_in = math.prod(w.shape[1:])
    norm = torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True)
    return w / (norm + MPCONV_EPS * math.sqrt(fan_in))


def convert_audio_vae_file(
    state: Mapping[str, torch.Tensor], model: AudioVAE, source: str, device: torch.device
) -> StateDict:
    """The family's converter: check the file's own keys, prefix them, then normalise every
    conv weight on `device` in float32 (the load-time transform)."""
    check_state_dict(audio_vae_file_layout(model), state, source)  # names the file's own keys
    conv_keys = set(model.conv_weight_names())
    return {
        key: normalize_mpconv_weight(value.to(device)) if key in conv_keys else value.to(device)
        for key, value in convert_audio_vae_state(state).items()
    }


AUDIO_VAE = CheckpointFamily(name="MMAudio VAE", build=AudioVAE, convert=convert_audio_vae_file)
load_audio_vae = (
    AUDIO_VAE.load
)  # (state, AudioVAEConfig, *, source, dtype=fp32, device) -> AudioVAE


def random_audio_vae_state(config: AudioVAEConfig, seed: int) -> StateDict:
    """Random VAE weights in the official `v1-16.pth` format (raw conv weights, float32)."""
    with torch.device("meta"):
        model = AudioVAE(config)
    gen = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for name, shape in audio_vae_file_layout(model).items():
        if name == "data_mean":  # log10-mel statistics in a plausible range
            value = -2.0 + 0.5 * torch.randn(shape, generator=gen)
        elif name == "data_std":
            value = 0.75 + 0.5 * torch.rand(shape, generator=gen)
        elif name.endswith("learnable_gain"):
            value = 0.1 * torch.randn(shape, generator=gen)
        else:  # raw conv weight; its scale is removed by the load-time normalisation
            value = torch.randn(shape, generator=gen)
        state[name] = value
    return state


# --- BigVGAN v1 vocoder --------------------------------------------------------------------

WeightNormSpelling = Literal["legacy", "parametrized"]
# spelling -> (suffix of g, suffix of v), each appended to "<conv>."
WEIGHT_NORM_SUFFIXES: dict[str, tuple[str, str]] = {
    "legacy": ("weight_g", "weight_v"),
    "parametrized": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
}
_LEGACY_KEY = re.compile(r"^(?P<conv>.+)\.weight_(?P<part>[gv])$")


def weight_norm_convs(model: Vocoder) -> list[str]:
    """Module names of every weight-normed conv (conv_pre, ups.i.0, AMP convs, conv_post)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d))
    ]


def _spelling_of(conv: str, state: Mapping[str, torch.Tensor]) -> str:
    """The spelling `state` uses for one conv; legacy (best_netG.pt's) when neither is present."""
    for spelling in ("legacy", "parametrized"):
        if any(f"{conv}.{suffix}" in state for suffix in WEIGHT_NORM_SUFFIXES[spelling]):
            return spelling
    return "legacy"


def vocoder_file_layout(
    model: Vocoder, state: Mapping[str, torch.Tensor]
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes a checkpoint must hold for `model`, in the spelling `state` uses per conv."""
    module_shapes = expected_shapes(model)
    layout: dict[str, tuple[int, ...]] = {}
    convs = set(weight_norm_convs(model))
    for key, shape in module_shapes.items():
        conv = key.removesuffix(".weight")
        if key.endswith(".weight") and conv in convs:
            g_suffix, v_suffix = WEIGHT_NORM_SUFFIXES[_spelling_of(conv, state)]
            layout[f"{conv}.{g_suffix}"] = (shape[0],) + (1,) * (len(shape) - 1)
            layout[f"{conv}.{v_suffix}"] = shape
        else:
            layout[key] = shape
    return layout


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w = g * v / ||v||, norm over every dim but 0, in float32."""
    v = v.float()
    norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)
    return v * (g.float() / norm)


def convert_vocoder_state(
    state: Mapping[str, torch.Tensor], convs: list[str], device: torch.device | str = "cpu"
) -> StateDict:
    """Fold each conv's (g, v) pair, in whichever spelling, into `<conv>.weight`.

    Every other key passes through unchanged; `state` must already match `vocoder_file_layout`.
    """
    out = {key: value.to(device) for key, value in state.items()}
    for conv in convs:
        g_suffix, v_suffix = WEIGHT_NORM_SUFFIXES[_spelling_of(conv, out)]
        g, v = out.pop(f"{conv}.{g_suffix}"), out.pop(f"{conv}.{v_suffix}")
        out[f"{conv}.weight"] = fold_weight_norm(g, v)
    return out


def respell_weight_norm(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Legacy `<conv>.weight_g/_v` keys -> `<conv>.parametrizations.weight.original0/1`."""
    g_suffix, v_suffix = WEIGHT_NORM_SUFFIXES["parametrized"]
    out: StateDict = {}
    for key, value in state.items():
        match = _LEGACY_KEY.match(key)
        if match is None:
            out[key] = value
        else:
            suffix = g_suffix if match["part"] == "g" else v_suffix
            out[f"{match['conv']}.{suffix}"] = value
    return out


def convert_vocoder_file(
    state: Mapping[str, torch.Tensor], model: Vocoder, source: str, device: torch.device
) -> StateDict:
    """The family's converter: check the file's keys in the spelling it uses per conv, then fold
    every (g, v) pair on `device` in float32."""
    check_state_dict(vocoder_file_layout(model, state), state, source)
    return convert_vocoder_state(state, weight_norm_convs(model), device=device)


VOCODER = CheckpointFamily(name="BigVGAN", build=Vocoder, convert=convert_vocoder_file)
# (state, VocoderConfig, *, source, dtype=fp32, device="cpu") -> Vocoder
load_vocoder = VOCODER.load


def anti_alias_filter(module: nn.Module) -> torch.Tensor:
    """The deterministic Kaiser-sinc filter [1, 1, K] of an up- or down-sampling module."""
    kernel_size = module.filter.shape[-1]
    if isinstance(module, MMAudioUpSample1d):
        ratio = module.ratio
    elif isinstance(module, MMAudioLowPassFilter1d):
        ratio = module.stride
    else:
        raise TypeError(f"not an anti-aliasing filter module: {type(module).__name__}")
    return kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, kernel_size)


# Damp the residual branches and the output so random weights give a waveform that neither
# explodes through the six stages nor saturates the tanh (keyed by module name or parent list).
_RANDOM_CONV_GAINS: dict[str, float] = {"convs2": 0.25, "conv_pre": 0.5, "conv_post": 0.1}


def _random_conv_gain(conv: str) -> float:
    return next((_RANDOM_CONV_GAINS[p] for p in conv.split(".") if p in _RANDOM_CONV_GAINS), 1.0)


def random_vocoder_state(
    config: VocoderConfig, seed: int, spelling: WeightNormSpelling = "legacy"
) -> StateDict:
    """Random generator weights in the official `best_netG.pt['generator']` format (float32).

    Conv weights are drawn so the folded weight is ~N(0, 1/fan_in); the filters are the real
    Kaiser-sinc ones.
    """
    with torch.device("meta"):
        model = Vocoder(config)
    modules = dict(model.named_modules())
    convs = set(weight_norm_convs(model))
    g_suffix, v_suffix = WEIGHT_NORM_SUFFIXES[spelling]
    gen = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for key, shape in expected_shapes(model).items():
        owner, _, leaf = key.rpartition(".")
        if leaf == "weight" and owner in convs:
            module = modules[owner]
            k = module.kernel_size[0]
            if isinstance(module, nn.ConvTranspose1d):  # [in, out, k]; g over input channels
                fan_in, row = module.in_channels * k / module.stride[0], module.out_channels * k
            else:  # [out, in, k]
                fan_in = row = module.in_channels * k
            g = _random_conv_gain(owner) * math.sqrt(row / fan_in)
            g = g * (1 + 0.1 * torch.randn(shape[0], 1, 1, generator=gen))
            state[f"{owner}.{g_suffix}"] = g
            state[f"{owner}.{v_suffix}"] = torch.randn(shape, generator=gen)
        elif leaf == "filter":
            state[key] = anti_alias_filter(modules[owner]).clone()
        elif leaf in ("alpha", "beta"):  # log-scale snake parameters
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        else:  # conv biases
            state[key] = 0.05 * torch.randn(shape, generator=gen)
    return state
