"""Wan2.2 video VAE: conformance, the official -> diffusers key rules, tiny-preset shapes."""

from __future__ import annotations

import pytest
import torch

from model.config import WanVAEConfig
from model.convert.wan_vae import (
    convert_wan_vae_state,
    load_wan_vae,
    random_wan_vae_state,
    to_official_wan_vae_state,
    wan_vae_rules,
    wan_vae_shapes,
)
from model.loading import CheckpointMismatchError, expected_shapes, meta_state_dict
from model.modules.video_vae import VideoVAE
from model.presets import get_preset
from tests.model._reference import REFERENCE, layout
from tools.conformance import run_case

LAYOUT = layout("wan22_vae")
TINY = get_preset("tiny").config.video_vae


@pytest.fixture
def one_thread():
    """Tiny convs gain nothing from threads; on a loaded box OpenMP spinning costs ~10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_vae() -> VideoVAE:
    return load_wan_vae(random_wan_vae_state(TINY, seed=0), TINY, source="random")


def test_conformance_wan_vae_case_passes(one_thread):
    checks = run_case("wan_vae", REFERENCE / "wan_vae")
    assert checks and all(c.passed for c in checks), "\n".join(c.line() for c in checks)
    assert {c.name for c in checks} == {
        "encode_video_latent",
        "encode_image_latent",
        "encode_video_mu_unnormalized",
        "decode_video_raw",
        "decode_video_clamped",
    }


# --- key rules and layout ----------------------------------------------------------------------


def test_full_size_layout_loads_on_meta_consuming_every_tensor():
    layout = {k: tuple(v) for k, v in LAYOUT["tensors"].items()}
    assert len(layout) == LAYOUT["num_tensors"] == 196
    config = WanVAEConfig()
    assert wan_vae_shapes(config) == layout

    state = meta_state_dict(LAYOUT["tensors"], torch.float32)
    converted = convert_wan_vae_state(state, config, "layout")
    vae = load_wan_vae(state, config, source="layout", device="meta")
    assert expected_shapes(vae.vae) == {k: tuple(v.shape) for k, v in converted.items()}
    assert sum(p.numel() for p in vae.parameters()) == LAYOUT["num_params"]
    assert {p.device.type for p in vae.parameters()} == {"meta"}
    assert vae.latents_mean.shape == vae.latents_std.shape == (48,)
    assert "latents_mean" not in vae.state_dict()  # constants, never read from a file


def test_rules_round_trip_one_to_one():
    # `rename` raises if two rules claim a key, so a clean round trip proves the table disjoint
    config = WanVAEConfig()
    state = meta_state_dict(LAYOUT["tensors"], torch.float32)
    converted = convert_wan_vae_state(state, config, "x")
    assert len(set(converted)) == len(state)
    back = to_official_wan_vae_state(converted, config, "x")
    assert list(back) == list(state)
    assert all(back[k] is state[k] for k in state)  # renamed, never copied


def test_rules_follow_the_res_block_count():
    # the tiny case has one residual block per stage: the resampler sits at index 1 (encoder)
    rules = wan_vae_rules(TINY)
    official = "encoder.downsamples.1.downsamples.1.time_conv.weight"
    assert rules.rename(official) == "encoder.down_blocks.1.downsampler.time_conv.weight"
    assert rules.rename("decoder.upsamples.0.upsamples.2.resample.1.bias") == (
        "decoder.up_blocks.0.upsampler.resample.1.bias"
    )
    assert rules.rename("decoder.upsamples.0.upsamples.3.resample.1.bias") is None


def test_an_extra_residual_block_is_a_mismatch():
    state = random_wan_vae_state(TINY, seed=0)
    state["encoder.downsamples.0.downsamples.5.residual.0.gamma"] = torch.ones(8, 1, 1, 1)
    with pytest.raises(CheckpointMismatchError, match=r"down_blocks\.0\.resnets\.5\.norm1"):
        load_wan_vae(state, TINY, source="extra.pth")


# --- tiny preset shapes ------------------------------------------------------------------------


def test_tiny_preset_encode_decode_shapes(tiny_vae, one_thread):
    preset = get_preset("tiny")
    frames, side = preset.num_frames, 64
    assert frames == 121
    video = torch.rand(1, 3, frames, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1

    latent = tiny_vae.encode(video)
    assert latent.shape == (1, 48, preset.video_latent_length, side // 16, side // 16)
    assert latent.shape[2] == 31 and torch.isfinite(latent).all()

    out = tiny_vae.decode(latent)
    assert out.shape == video.shape
    assert out.min() >= -1 and out.max() <= 1


def test_encode_image_takes_4d_or_5d(tiny_vae, one_thread):
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    a = tiny_vae.encode_image(image)
    assert a.shape == (2, 48, 1, 2, 3)
    torch.testing.assert_close(tiny_vae.encode_image(image.unsqueeze(2)), a)
    # the first frame of a video encodes alone (causal), so it equals the image latent
    video = torch.cat([image.unsqueeze(2), torch.rand(2, 3, 4, 32, 48) * 2 - 1], dim=2)
    torch.testing.assert_close(tiny_vae.encode(video)[:, :, :1], a, rtol=1e-5, atol=1e-5)


def test_unclamped_decode_is_the_clamped_one_before_clipping(tiny_vae, one_thread):
    latent = 3 * torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    raw = tiny_vae.decode(latent, clamp=False)
    clamped = tiny_vae.decode(latent)
    assert raw.shape == clamped.shape == (1, 3, 5, 32, 32)
    torch.testing.assert_close(raw.clamp(-1, 1), clamped)


# --- decode in pieces (exact, ~half the memory: bench/memory.py's est_vae_decode_act_gib) -------


def _stock(vae: VideoVAE, latent: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """diffusers' own decode (whole latent-frame chunks): the reference."""
    saved, vae.tail_frames = vae.tail_frames, None
    try:
        return vae.decode(latent, clamp=clamp)
    finally:
        vae.tail_frames = saved


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("tail_frames", [1, 2])
def test_decode_in_pieces_equals_diffusers_decode(tiny_vae, one_thread, tail_frames):
    """fp32 on CPU: pieces of 1 or 2 frames after each temporal upsampler, the causal-conv
    cache carried across pieces, give diffusers' pixels (clamped and raw): bit-equal at a 4x4
    latent; at 2x3, where the conv kernels for 3-frame and whole-chunk inputs round
    differently, within 4e-7 relative (measured; bound 1e-6)."""
    tiny_vae.tail_frames = tail_frames
    try:
        for (h, w), exact in (((4, 4), True), ((2, 3), False)):
            latent = 2 * torch.randn(1, 48, 4, h, w, generator=torch.Generator().manual_seed(3))
            for clamp in (True, False):
                out, ref = tiny_vae.decode(latent, clamp=clamp), _stock(tiny_vae, latent, clamp)
                assert out.shape == (1, 3, 13, 16 * h, 16 * w)
                if exact:
                    assert torch.equal(out, ref), (tail_frames, clamp)
                else:
                    assert _rel(out, ref) <= 1e-6, (tail_frames, clamp, _rel(out, ref))
        # a batch decodes item by item (the causal cache is per clip), as diffusers' slicing
        latent = 2 * torch.randn(2, 48, 3, 4, 4, generator=torch.Generator().manual_seed(5))
        per_item = torch.cat([_stock(tiny_vae, item) for item in latent.split(1)])
        assert torch.equal(tiny_vae.decode(latent), per_item)
    finally:
        tiny_vae.tail_frames = 1


def test_decode_uint8_gives_the_pipelines_frames_on_the_host(tiny_vae, one_thread):
    latent = 2 * torch.randn(1, 48, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    frames = tiny_vae.decode_uint8(latent, device="cpu")
    pixels = _stock(tiny_vae, latent)[0]  # what the pipeline converted before
    # the official conversion: clamp, ((x + 1) / 2 * 255) in float32, truncated
    expected = torch.from_numpy(
        ((pixels.float().clamp(-1, 1).numpy() + 1) / 2 * 255).astype("uint8")
    )
    assert frames.dtype == torch.uint8 and frames.shape == (1, 9, 32, 32, 3)
    assert torch.equal(frames[0], expected.permute(1, 2, 3, 0))


def test_latent_normalisation_round_trips(tiny_vae):
    mu = torch.randn(1, 48, 2, 2, 2)
    torch.testing.assert_close(tiny_vae.denormalize(tiny_vae.normalize(mu)), mu)
    mean = torch.tensor(TINY.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(tiny_vae.normalize(mu), (mu - mean) / std)


def test_tiling_and_slicing_knobs(one_thread):
    vae = load_wan_vae(random_wan_vae_state(TINY, seed=0), TINY, source="random")
    latent = torch.randn(2, 48, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    vae.enable_slicing()
    vae.enable_tiling(
        tile_sample_min_height=32,
        tile_sample_min_width=32,
        tile_sample_stride_height=16,
        tile_sample_stride_width=16,
    )
    assert vae.decode(latent).shape == (2, 3, 1, 64, 64)
    with pytest.raises(ValueError, match="disable_tiling"):
        vae.decode(latent, clamp=False)
    vae.disable_tiling()
    assert vae.decode(latent, clamp=False).shape == (2, 3, 1, 64, 64)


def test_bad_shapes_raise_value_error(tiny_vae):
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny_vae.encode(torch.zeros(1, 3, 1, 40, 48))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tiny_vae.encode(torch.zeros(1, 4, 1, 32, 32))
    with pytest.raises(ValueError, match="latent must be"):
        tiny_vae.decode(torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(ValueError, match="image must be"):
        tiny_vae.encode_image(torch.zeros(1, 3, 2, 32, 32))
