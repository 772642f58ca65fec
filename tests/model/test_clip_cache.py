"""`ClipCache` (`FusionModel.clip()`): the RoPE tables, embedded texts and per-layer text K/V
computed once per clip give bit-identical outputs (fp32, CPU), for every step, both guidance
passes, skip-layer guidance, i2v, fused projections and block offload; the cache never grows
after the first step and is empty after the clip."""

from __future__ import annotations

import pytest
import torch

from model import optimize as opt
from model.convert.fusion import load_fusion, random_fusion_state
from model.modules.fusion import ClipCache, FusionModel
from model.presets import get_preset

TINY = get_preset("tiny").config.fusion


def _model() -> FusionModel:
    return load_fusion(random_fusion_state(TINY, 1), TINY, source="random", dtype=torch.float32)


def _step_inputs(g: torch.Generator) -> dict[str, torch.Tensor]:
    return dict(
        video=torch.randn(1, 48, 5, 4, 6, generator=g), audio=torch.randn(1, 23, 20, generator=g)
    )


def _texts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return tuple(torch.randn(1, n, 32, generator=g) for n in (7, 5, 4))  # pos, video neg, audio neg


TEXTS = _texts()  # one clip's texts: the same tensors every step


def _three_steps(model: FusionModel, clean: bool, slg: int | None) -> list[torch.Tensor]:
    """Three steps of both guidance passes (new latents and timestep each step, same texts)."""
    pos, vneg, aneg = TEXTS
    g = torch.Generator().manual_seed(3)
    outs = []
    with torch.no_grad():
        for t in (900, 610, 250):
            x = _step_inputs(g)
            tt = torch.tensor([t])
            outs += model(x["video"], x["audio"], tt, pos, pos, first_frame_is_clean=clean)
            outs += model(
                x["video"], x["audio"], tt, vneg, aneg, first_frame_is_clean=clean, slg_layer=slg
            )
    return outs


@pytest.fixture(scope="module")
def model() -> FusionModel:
    return _model()


@pytest.mark.parametrize(("clean", "slg"), [(False, None), (True, 1)])
def test_clip_cache_is_bit_equal_over_steps(model, clean, slg):
    expected = _three_steps(model, clean, slg)  # no cache set
    model.clip_cache = ClipCache()
    try:
        with model.clip():
            got = _three_steps(model, clean, slg)
            entries = len(model.clip_cache._entries)
            again = _three_steps(model, clean, slg)  # same texts again: no new entries
            assert len(model.clip_cache._entries) == entries
        assert model.clip_cache._entries == {} and not model.clip_cache.active
    finally:
        model.clip_cache = None
    # rope x 2 towers, embedded text x 3 (pos in each tower, video neg, audio neg), K/V lists x 4
    assert entries == 2 + 4 + 4
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(again, expected, strict=True))


def test_clip_cache_with_the_fast_path_and_block_offload():
    model = _model()
    expected = _three_steps(model, True, 1)
    opt.optimize_fusion(model, opt.FastPath(compile=False, check_attention=False), "cpu")
    assert isinstance(model.clip_cache, ClipCache)  # the fast path sets it
    with model.clip():
        fused = _three_steps(model, True, 1)
    offload = opt.enable_block_offload(model, torch.device("cpu"))
    try:
        with model.clip():
            streamed = _three_steps(model, True, 1)
    finally:
        offload.disable()
    for a, b, c in zip(fused, streamed, expected, strict=True):
        assert torch.equal(a, b)  # the cache computes with each layer's fetched weights
        rel = float((a - c).norm() / c.norm())
        assert rel < 1e-6, rel  # fused q/k/v GEMMs round differently from separate ones


def test_a_changed_text_tensor_misses_and_batched_cfg_adds_nothing(model):
    pos, vneg, aneg = _texts()
    g = torch.Generator().manual_seed(5)
    x = _step_inputs(g)
    t = torch.tensor([500])
    model.clip_cache = ClipCache()
    try:
        with torch.no_grad(), model.clip():
            first = model(x["video"], x["audio"], t, pos, pos)
            pos.mul_(2)  # in place: a new version of the same tensor
            changed = model(x["video"], x["audio"], t, pos, pos)
            entries = len(model.clip_cache._entries)
            model.forward_cfg(x["video"], x["audio"], t, (pos, pos), (vneg, aneg))
            assert len(model.clip_cache._entries) == entries  # joined texts: not cached
        model.clip_cache = None
        with torch.no_grad():
            plain = model(x["video"], x["audio"], t, pos, pos)
    finally:
        model.clip_cache = None
    assert not torch.equal(first[0], changed[0])
    assert torch.equal(changed[0], plain[0]) and torch.equal(changed[1], plain[1])
