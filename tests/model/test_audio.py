"""Audio decode path: MMAudio VAE + BigVGAN v1 vocoder, their converters and loaders."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from model.config import AudioVAEConfig, VocoderConfig
from model.convert.mmaudio import (
    WEIGHT_NORM_SUFFIXES,
    load_audio_vae,
    load_vocoder,
    normalize_mpconv_weight,
    random_audio_vae_state,
    random_vocoder_state,
    respell_weight_norm,
)
from model.loading import CheckpointMismatchError, count_elements, meta_state_dict
from model.presets import PRESETS
from tests.model._reference import REFERENCE
from tests.model._reference import layout as reference_layout
from tools.conformance import mmaudio as mmaudio_case

CASE = REFERENCE / "mmaudio"

# Two upsampling stages and one AMP kernel: every code path of the vocoder, in milliseconds.
SMALL_VOCODER = VocoderConfig(
    num_mels=8,
    upsample_rates=(2, 2),
    upsample_kernel_sizes=(4, 4),
    upsample_initial_channel=8,
    resblock_kernel_sizes=(3,),
    resblock_dilation_sizes=((1, 3),),
)
SMALL_VAE = AudioVAEConfig(data_dim=8, embed_dim=4, hidden_dim=8)


def _mel(config: VocoderConfig, frames: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, config.num_mels, frames, generator=gen) - 2.0


def _to_legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g, v = WEIGHT_NORM_SUFFIXES["parametrized"]
    out = {}
    for key, value in state.items():
        key = key.replace(f".{g}", ".weight_g").replace(f".{v}", ".weight_v")
        out[key] = value
    return out


# --- conformance ---------------------------------------------------------------------------


def test_conformance_case_passes():
    checks = mmaudio_case.run(CASE)
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, failed
    names = {c.name for c in checks}
    for name in (
        "mel_normalized",
        "mel",
        "waveform_pre_tanh",
        "waveform",
        "chain.waveform",
        "encode_mean",
        "encode_logvar_clamped",
        "vocoder.parametrized_spelling_identical",
    ):
        assert name in names
    assert all(c.rel_l2 < 1e-5 for c in checks if c.rel_l2 is not None)


def test_random_filters_are_the_reference_kaiser_sinc_filters():
    case = json.loads((CASE / "case.json").read_text())
    config = VocoderConfig.from_official(case["vocoder_config"])
    reference = load_file(str(CASE / "weights_vocoder.safetensors"))
    ours = random_vocoder_state(config, seed=0)
    assert set(ours) == set(reference)
    filters = [k for k in reference if k.endswith(".filter")]
    assert len(filters) == 2 * (len(config.upsample_rates) * 3 * 6 + 1)
    for key in filters:
        assert torch.equal(ours[key], reference[key]), key


# --- weight-norm spellings -----------------------------------------------------------------


def test_both_weight_norm_spellings_load_identically():
    legacy = random_vocoder_state(SMALL_VOCODER, seed=3, spelling="legacy")
    parametrized = random_vocoder_state(SMALL_VOCODER, seed=3, spelling="parametrized")
    assert any(k.endswith(".weight_g") for k in legacy)
    assert any(k.endswith(".parametrizations.weight.original0") for k in parametrized)
    respelled = respell_weight_norm(legacy)
    assert respelled.keys() == parametrized.keys()
    assert all(torch.equal(respelled[k], parametrized[k]) for k in parametrized)

    a = load_vocoder(legacy, SMALL_VOCODER, source="legacy")
    b = load_vocoder(parametrized, SMALL_VOCODER, source="parametrized")
    mixed = dict(legacy)
    mixed.pop("conv_pre.weight_g"), mixed.pop("conv_pre.weight_v")
    mixed["conv_pre.parametrizations.weight.original0"] = legacy["conv_pre.weight_g"]
    mixed["conv_pre.parametrizations.weight.original1"] = legacy["conv_pre.weight_v"]
    c = load_vocoder(mixed, SMALL_VOCODER, source="mixed")
    mel = _mel(SMALL_VOCODER)
    with torch.no_grad():
        out = a(mel)
        assert torch.equal(out, b(mel))
        assert torch.equal(out, c(mel))
    assert out.shape == (1, 1, mel.shape[-1] * SMALL_VOCODER.hop_length)


def test_weight_norm_fold_uses_dim0_of_transposed_conv():
    state = random_vocoder_state(SMALL_VOCODER, seed=1)
    vocoder = load_vocoder(state, SMALL_VOCODER, source="random")
    g, v = state["ups.0.0.weight_g"], state["ups.0.0.weight_v"]  # [in, 1, 1], [in, out, k]
    assert g.shape[0] == v.shape[0] == SMALL_VOCODER.upsample_initial_channel
    folded = vocoder.ups[0][0].weight
    torch.testing.assert_close(folded.flatten(1).norm(dim=1), g.flatten())


# --- strict loading ------------------------------------------------------------------------


def _vae_state() -> dict[str, torch.Tensor]:
    return random_audio_vae_state(SMALL_VAE, seed=0)


def _vocoder_state() -> dict[str, torch.Tensor]:
    return random_vocoder_state(SMALL_VOCODER, seed=0)


@pytest.mark.parametrize(
    "kind, edit, field, key",
    [
        ("vae", lambda s: s.pop("decoder.conv_out.weight"), "missing", "decoder.conv_out.weight"),
        ("vae", lambda s: s.pop("data_std"), "missing", "data_std"),
        ("vae", lambda s: s.update(extra=torch.zeros(1)), "unexpected", "extra"),
        ("vae", lambda s: s.update(data_mean=torch.zeros(8)), "wrong_shapes", "data_mean"),
        ("vocoder", lambda s: s.pop("conv_pre.weight_g"), "missing", "conv_pre.weight_g"),
        (
            "vocoder",
            lambda s: s.pop("activation_post.upsample.filter"),
            "missing",
            "activation_post.upsample.filter",
        ),
        (
            "vocoder",
            lambda s: s.update({"conv_post.weight": s["conv_post.weight_v"]}),
            "unexpected",
            "conv_post.weight",
        ),
        (
            "vocoder",
            lambda s: s.update({"ups.0.0.weight_v": torch.zeros(8, 4, 3)}),
            "wrong_shapes",
            "ups.0.0.weight_v",
        ),
        (
            "vocoder",
            lambda s: s.update({"ups.0.0.weight_g": torch.zeros(4, 1, 1)}),
            "wrong_shapes",
            "ups.0.0.weight_g",
        ),
    ],
)
def test_mismatch_raises_naming_the_key(kind, edit, field, key):
    state = _vae_state() if kind == "vae" else _vocoder_state()
    edit(state)
    with pytest.raises(CheckpointMismatchError) as info:
        if kind == "vae":
            load_audio_vae(state, SMALL_VAE, source="bad.pth")
        else:
            load_vocoder(state, SMALL_VOCODER, source="bad.pt")
    err = info.value
    found = getattr(err, field)
    names = [item[0] for item in found] if field == "wrong_shapes" else found
    assert key in names
    assert key in str(err) and "bad.p" in str(err)


def test_vae_load_time_normalisation():
    weight = torch.randn(6, 5, 3) * 7
    normalised = normalize_mpconv_weight(weight)
    norms = normalised.flatten(1).norm(dim=1)
    expected = weight.flatten(1).norm(dim=1) / (
        weight.flatten(1).norm(dim=1) + 1e-4 * math.sqrt(15)
    )
    torch.testing.assert_close(norms, expected)
    vae = load_audio_vae(_vae_state(), SMALL_VAE, source="random")
    for name in vae.conv_weight_names():
        w = vae.get_parameter(name)
        assert float(w.flatten(1).norm(dim=1).max()) <= 1.0, name


def test_dtype_and_device_arguments():
    vae = load_audio_vae(_vae_state(), SMALL_VAE, source="random", dtype=torch.bfloat16)
    vocoder = load_vocoder(_vocoder_state(), SMALL_VOCODER, source="random", dtype=torch.bfloat16)
    assert {p.dtype for p in vae.state_dict().values()} == {torch.bfloat16}
    assert {p.dtype for p in vocoder.state_dict().values()} == {torch.bfloat16}
    z = torch.randn(1, SMALL_VAE.embed_dim, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        assert vae.decode(z).shape == (1, SMALL_VAE.data_dim, 8)


def test_unsupported_vocoder_variant_is_rejected():
    with pytest.raises(ValueError, match="resblock"):
        VocoderConfig.from_official({"resblock": "2", "activation": "snakebeta"})
    with pytest.raises(ValueError, match="snake_logscale"):
        load_vocoder({}, VocoderConfig(snake_logscale=False), source="x", device="meta")


# --- full-size layouts (meta device) -------------------------------------------------------


def test_full_size_vae_layout_is_consumed_exactly():
    layout = reference_layout("mmaudio_vae_16k")
    state = meta_state_dict(layout["tensors"], torch.float32)
    assert (len(state), count_elements(state)) == (57, 171_657_378)
    assert (layout["num_tensors"], layout["num_params"]) == (57, 171_657_378)
    vae = load_audio_vae(state, AudioVAEConfig(), source="v1-16.pth", device="meta")
    assert count_elements(vae.state_dict()) == 171_657_378
    assert all(t.is_meta for t in vae.state_dict().values())


@pytest.mark.parametrize("spelling", ["parametrized", "legacy"])
def test_full_size_vocoder_layout_is_consumed_exactly(spelling):
    layout = reference_layout("bigvgan_16k")
    assert layout["inner_key"] == "generator"
    state = meta_state_dict(layout["tensors"], torch.float32)
    if spelling == "legacy":
        state = _to_legacy(state)
        assert sum(k.endswith((".weight_g", ".weight_v")) for k in state) == 232
    assert (len(state), count_elements(state)) == (784, 112_233_866)
    assert (layout["num_tensors"], layout["num_params"]) == (784, 112_233_866)
    vocoder = load_vocoder(state, VocoderConfig(), source="best_netG.pt", device="meta")
    folded = vocoder.state_dict()
    assert (len(folded), count_elements(folded)) == (668, 112_202_089)  # after weight-norm removal


# --- tiny preset ---------------------------------------------------------------------------


def test_tiny_preset_audio_decode():
    preset = PRESETS["tiny"]
    config = preset.config
    vae = load_audio_vae(
        random_audio_vae_state(config.audio_vae, seed=0), config.audio_vae, source="random"
    )
    vocoder = load_vocoder(
        random_vocoder_state(config.vocoder, seed=1), config.vocoder, source="random"
    )
    length = preset.audio_latent_length
    z = torch.randn(
        1, config.audio_vae.embed_dim, length, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        mel = vae.decode(z)
        waveform = vocoder(mel)
    assert mel.shape == (1, config.audio_vae.data_dim, 2 * length)
    assert waveform.shape == (1, 1, 2 * length * config.vocoder.hop_length) == (1, 1, 80384)
    assert torch.isfinite(waveform).all()
    assert float(waveform.abs().max()) < 1.0
    assert float(waveform.std()) > 1e-3  # not silent
