"""FusionModel: reference parity, shapes, variants, batching, strict loading, fp8, full layout."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from model.config import FusionConfig, TowerConfig
from model.convert.fusion import load_fusion, random_fusion_state
from model.loading import count_elements, meta_state_dict
from model.modules.fusion import (
    FP32_MODULE_TYPES,
    FusionModel,
    fusion_layer,
    rope_angles,
    rope_split,
)
from tools.conformance import run_case
from tools.conformance.fusion import record_taps

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"

# 2 layers, 2 heads, head_dim 12, text_len 8: built here, random weights
_TOWER = dict(dim=24, ffn_dim=48, freq_dim=32, num_heads=2, num_layers=2, text_len=8, text_dim=16)
CONFIG = FusionConfig(
    video=TowerConfig(modality="video", **_TOWER),
    audio=TowerConfig(
        modality="audio", in_dim=20, out_dim=20, patch_size=(1,), rope_scale=0.19676, **_TOWER
    ),
)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_fusion_state(CONFIG, seed=0)


@pytest.fixture(scope="module")
def model(state) -> FusionModel:
    return load_fusion(state, CONFIG, source="random", dtype=torch.float32)


def _inputs(batch: int = 1, seed: int = 0, frames: int = 3, audio_len: int = 9):
    g = torch.Generator().manual_seed(seed)
    return dict(
        video=torch.randn(batch, 48, frames, 4, 6, generator=g),
        audio=torch.randn(batch, audio_len, 20, generator=g),
        t=torch.full((batch,), 700, dtype=torch.int64),
        video_context=torch.randn(batch, 5, 16, generator=g),
        audio_context=torch.randn(batch, 3, 16, generator=g),
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_reference_case_passes():
    checks = run_case("fusion", FIXTURES / "fusion")
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, failed
    names = {c.name for c in checks}
    for variant in ("t2v", "i2v", "t2v_slg", "i2v_slg"):
        assert {f"{variant}.video_pred", f"{variant}.audio_pred"} <= names
    assert {"rope.video_freqs", "rope.audio_freqs", "i2v.taps.block2.video_out"} <= names
    assert max(c.rel_l2 for c in checks) < 1e-5


@torch.no_grad()
def test_shapes_and_dtype(model):
    x = _inputs()
    video, audio = model(**x)
    assert video.shape == x["video"].shape and audio.shape == x["audio"].shape
    assert video.dtype == audio.dtype == torch.float32
    assert torch.isfinite(video).all() and torch.isfinite(audio).all()


@torch.no_grad()
def test_slg_skips_a_block(model):
    x = _inputs()
    base = model(**x)
    for off in (None, False, 0, -1):
        same = model(**x, slg_layer=off)
        assert all(torch.equal(a, b) for a, b in zip(base, same, strict=True))
    with record_taps(model) as taps:
        skipped = model(**x, slg_layer=1)
    assert "block1.video_out" not in taps and "block0.video_out" in taps
    assert model.layer_fn is fusion_layer  # the taps' wrapper is gone after the block
    assert all(_rel(a, b) > 1e-3 for a, b in zip(skipped, base, strict=True))


@torch.no_grad()
def test_first_frame_is_clean_retimes_video_frame0_only(model):
    x = _inputs()
    with record_taps(model) as t2v_taps:
        t2v = model(**x)
    with record_taps(model) as i2v_taps:
        i2v = model(**x, first_frame_is_clean=True)
    frame0 = 2 * 3  # (H/2) * (W/2) tokens of latent frame 0
    e_t2v, e_i2v = t2v_taps["video_time_emb"], i2v_taps["video_time_emb"]
    assert not torch.allclose(e_t2v[:, :frame0], e_i2v[:, :frame0])
    torch.testing.assert_close(e_t2v[:, frame0:], e_i2v[:, frame0:])  # GEMM shapes differ: ~1 ulp
    assert torch.equal(t2v_taps["audio_time_emb"], i2v_taps["audio_time_emb"])
    assert _rel(i2v[0], t2v[0]) > 1e-3
    # audio sees it only through fusion (it attends to the video stream)
    assert _rel(i2v[1], t2v[1]) > 0


@torch.no_grad()
def test_batch_equals_single_calls(model):
    x = _inputs(batch=2, seed=3)
    x["t"] = torch.tensor([900, 250])
    video, audio = model(**x, first_frame_is_clean=True, slg_layer=1)
    for b in range(2):
        single = {k: v[b : b + 1] for k, v in x.items()}
        v1, a1 = model(**single, first_frame_is_clean=True, slg_layer=1)
        torch.testing.assert_close(video[b : b + 1], v1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(audio[b : b + 1], a1, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_context_is_zero_padded_not_masked(model):
    x = _inputs()
    base = model(**x)
    padded = dict(x, video_context=torch.cat([x["video_context"], torch.zeros(1, 2, 16)], 1))
    assert all(torch.equal(a, b) for a, b in zip(base, model(**padded), strict=True))
    with pytest.raises(ValueError, match="text_len"):
        model(**dict(x, audio_context=torch.randn(1, 9, 16)))


def test_rope_audio_rotates_only_frame_pairs():
    angles = rope_angles((5,), head_dim=12, scale=0.5)
    pf, _, _ = rope_split(12)
    assert angles.shape == (5, 6) and angles.dtype == torch.float64
    assert angles[:, pf:].abs().max() == 0 and angles[1, 0] == 0.5
    video = rope_angles((2, 3, 4), head_dim=12)
    assert video.shape == (24, 6)


@torch.no_grad()
def test_fp8_state_computes_in_bf16(state, model):
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in state.items()}
    fp8["video_model.head.head.bias"] = state["video_model.head.head.bias"].bfloat16()  # mixed
    m8 = load_fusion(fp8, CONFIG, source="fp8", dtype=torch.bfloat16)
    assert {p.dtype for p in m8.parameters()} == {torch.bfloat16}
    x = _inputs()
    video, audio = m8(**x)
    assert video.dtype == torch.float32 and torch.isfinite(video).all()
    # same fp8-rounded weights in fp32: bf16 compute stays close
    ref = load_fusion(
        {k: v.float() for k, v in fp8.items()}, CONFIG, source="fp8", dtype=torch.float32
    )
    rv, ra = ref(**x)
    assert _rel(video, rv) < 5e-2 and _rel(audio, ra) < 5e-2


@torch.no_grad()
def test_bf16_forward_close_to_fp32(state, model):
    mb = load_fusion(state, CONFIG, source="random", dtype=torch.bfloat16)
    x = _inputs()
    (vb, ab), (vf, af) = mb(**x, first_frame_is_clean=True), model(**x, first_frame_is_clean=True)
    assert _rel(vb, vf) < 5e-2 and _rel(ab, af) < 5e-2


def test_full_size_layout_on_meta():
    layout = json.loads((FIXTURES / "layout" / "fusion.json").read_text())
    state = meta_state_dict(layout["tensors"], torch.bfloat16)
    model = load_fusion(state, FusionConfig(), source="fusion.json", device="meta")
    consumed = model.state_dict()
    assert len(consumed) == layout["num_tensors"] == 2073
    assert count_elements(consumed) == layout["num_params"] == 11_660_753_108
    assert all(t.is_meta and t.dtype == torch.bfloat16 for t in consumed.values())


@torch.no_grad()
def test_qk_norm_off_has_no_fusion_key_norm():
    """Without qk_norm the official model has no norm_k_fusion (like norm_q / norm_k)."""
    towers = {name: dataclasses.replace(t, qk_norm=False) for name, t in
              (("video", CONFIG.video), ("audio", CONFIG.audio))}  # fmt: skip
    config = FusionConfig(**towers)
    state = random_fusion_state(config, seed=1)
    assert not any("norm_k_fusion" in k or "norm_q" in k for k in state)
    model = load_fusion(state, config, source="random", dtype=torch.float32)
    video, audio = model(**_inputs())
    assert torch.isfinite(video).all() and torch.isfinite(audio).all()


def test_fp32_islands_are_the_listed_modules():
    """`FusionModel.fp32_modules` names exactly the modules that compute in float32."""
    with torch.device("meta"):
        model = FusionModel(CONFIG)
    islands = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, FP32_MODULE_TYPES)
    }
    assert islands | {"modulation"} == set(FusionModel.fp32_modules)  # + the head's table
    assert {n for n, _ in model.named_parameters() if n.endswith("head.modulation")}
    listed = [
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in FusionModel.fp32_modules
    ]
    assert all(isinstance(dict(model.named_modules())[n], FP32_MODULE_TYPES) for n in listed)


@torch.no_grad()
def test_one_compute_dtype_with_fp32_islands(state):
    """bf16 weights: linears run in bf16, the islands return fp32, the outputs are fp32."""
    mb = load_fusion(state, CONFIG, source="random", dtype=torch.bfloat16)
    assert mb.dtype == torch.bfloat16
    seen: dict[str, torch.dtype] = {}

    def record(name: str):  # a forward hook that keeps the output dtype (returns None)
        def hook(module, args, out) -> None:
            seen[name] = (out[0] if isinstance(out, list | tuple) else out).dtype

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in mb.named_modules()
        if isinstance(module, FP32_MODULE_TYPES + (torch.nn.Linear,))
    ]
    video, audio = mb(**_inputs(), first_frame_is_clean=True)
    for hook in hooks:
        hook.remove()
    assert video.dtype == audio.dtype == torch.float32
    for name, dtype in seen.items():
        kind = type(dict(mb.named_modules())[name])
        if kind is torch.nn.Linear and ".time_" not in name:
            assert dtype == torch.bfloat16, name
        elif kind.__name__ in ("LayerNorm", "Fp32Sequential", "Modulation"):
            assert dtype == torch.float32, name
