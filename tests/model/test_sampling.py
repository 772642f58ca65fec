"""model/sampling.py: SamplingParams checks, replaces, and the variants' defaults."""

import pytest

from model.presets import PRESETS
from model.sampling import SamplingParams


def test_defaults_are_the_official_release():
    p = SamplingParams()
    assert (p.steps, p.solver, p.shift, p.slg_layer) == (50, "unipc", 5.0, 11)
    assert (p.video_guidance_scale, p.audio_guidance_scale) == (4.0, 3.0)
    assert (p.height, p.width) == (512, 992) and p.seed is None
    assert PRESETS["720x720_5s"].sampling == p


@pytest.mark.parametrize("off", [-1, 0, None])
def test_skip_layer_guidance_off_is_none(off):
    assert SamplingParams(slg_layer=off).slg_layer is None


def test_replace_keeps_values_not_given():
    p = SamplingParams(steps=4).replace(steps=None, seed=3, solver="euler")
    assert (p.steps, p.seed, p.solver) == (4, 3, "euler")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(steps=0), "steps"),
        (dict(steps=True), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(solver="ddim"), "solver"),
        (dict(shift=0.0), "shift"),
        (dict(slg_layer=30), "slg_layer must be in -1..29"),
        (dict(slg_layer=-2), "slg_layer"),
        (dict(height=8), "height"),
        (dict(width=5000), "width"),
        (dict(seed=2**64), "seed"),
        (dict(seed=-(2**63) - 1), "seed"),
        (dict(noise="gpu"), "noise"),
    ],
)
def test_check_names_the_bad_value(changes, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**changes).check(num_layers=30)


def test_preset_lengths_come_from_the_configs():
    tiny, short, ten = PRESETS["tiny"], PRESETS["tiny_1s"], PRESETS["960x960_10s"]
    assert (tiny.num_frames, tiny.audio_samples) == (121, 157 * 2 * 256)
    assert (short.num_frames, short.audio_samples) == (25, 33 * 2 * 256)
    assert ten.num_frames == 241
    # audio and video last the same to within one video frame (1/24 s)
    for preset in PRESETS.values():
        assert abs(preset.num_frames / 24 - preset.audio_samples / 16000) < 1 / 24
