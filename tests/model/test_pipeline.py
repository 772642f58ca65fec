"""OviPipeline on the tiny preset: shapes, seeds, i2v, progress, cancellation, input checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from model.pipeline import GenerationCancelled, OviPipeline


def test_t2v_makes_the_variant_length_of_frames_and_audio(tiny_pipeline: OviPipeline):
    out = tiny_pipeline("A dog runs on the beach. Audio: waves.", steps=2, seed=1)
    assert out.video.dtype == np.uint8 and out.video.shape == (25, out.height, out.width, 3)
    assert (out.height, out.width) == (64, 64)
    assert out.audio.dtype == np.float32 and out.audio.shape == (33 * 2 * 256,)
    assert np.abs(out.audio).max() <= 1.0
    assert out.seed == 1 and out.fps == 24 and out.sample_rate == 16000


def test_same_seed_same_latents_different_seed_different(tiny_pipeline: OviPipeline):
    v1, a1 = tiny_pipeline.prepare_latents(7, 64, 64)
    v2, a2 = tiny_pipeline.prepare_latents(7, 64, 64)
    v3, _ = tiny_pipeline.prepare_latents(8, 64, 64)
    assert torch.equal(v1, v2) and torch.equal(a1, a2)
    assert not torch.equal(v1, v3)
    first = tiny_pipeline("waves", steps=2, seed=3)
    again = tiny_pipeline("waves", steps=2, seed=3)
    other = tiny_pipeline("waves", steps=2, seed=4)
    np.testing.assert_array_equal(first.video, again.video)
    np.testing.assert_array_equal(first.audio, again.audio)
    assert not np.array_equal(first.audio, other.audio)


def test_random_seed_is_reported(tiny_pipeline: OviPipeline):
    out = tiny_pipeline("rain", steps=1)
    assert isinstance(out.seed, int) and 0 <= out.seed < 2**31


def test_i2v_size_follows_the_image_aspect(tiny_pipeline: OviPipeline):
    image = Image.new("RGB", (200, 100), (200, 30, 30))
    out = tiny_pipeline("a red wall", image, steps=2, seed=0)
    assert out.width > out.height  # landscape image -> landscape clip at the tiny area
    assert out.video.shape[0] == tiny_pipeline.preset.num_frames


def test_progress_callback_and_cancellation(tiny_pipeline: OviPipeline):
    seen = []
    tiny_pipeline("birds", steps=3, seed=0, callback=seen.append)
    assert [s.step for s in seen] == [1, 2, 3] and all(s.total == 3 for s in seen)
    assert seen[-1].elapsed >= seen[0].elapsed >= 0
    calls = []
    with pytest.raises(GenerationCancelled):
        tiny_pipeline(
            "birds", steps=3, seed=0, callback=calls.append, should_cancel=lambda: len(calls) >= 1
        )
    assert len(calls) == 1  # stopped between steps


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps"),
        (dict(solver="ddim"), "solver"),
        (dict(shift=0.0), "shift"),
        (dict(slg_layer=99), "slg_layer"),
        (dict(height=8), "height"),
    ],
)
def test_bad_values_raise_value_error(tiny_pipeline: OviPipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline("x", **kwargs)


def test_non_string_prompt_is_refused(tiny_pipeline: OviPipeline):
    # an empty prompt generates, as on fal (tests/model/test_parity.py)
    with pytest.raises(ValueError, match="prompt"):
        tiny_pipeline(None)


def test_prompt_is_formatted_for_the_variant(tiny_pipeline: OviPipeline, caplog):
    out = tiny_pipeline("A cat. <AUDCAP>meow<ENDAUDCAP>", steps=1, seed=0)
    assert out.prompt == "A cat. Audio: meow"  # tiny uses the Ovi 1.1 caption style
    assert "rewritten" in caplog.text


def test_real_variant_without_files_names_the_file_and_the_command(tmp_path):
    from model.loading import WeightFileMissingError

    with pytest.raises(WeightFileMissingError, match="make weights VARIANT=720x720_5s"):
        OviPipeline.from_pretrained(tmp_path, "720x720_5s")


@pytest.mark.parametrize("mode", ["offload_text_encoder", "cpu_offload"])
def test_offloaded_components_live_on_the_host_and_visit_the_device(mode):
    built = OviPipeline.from_preset("tiny_1s")
    parts = (built.text_encoder, built.fusion, built.video_vae, built.audio_vae, built.vocoder)
    visiting = list(parts) if mode == "cpu_offload" else [built.text_encoder]
    # 1. placement: a "meta" compute device shows where each component lives
    meta = OviPipeline(built.preset, *parts, device="meta", **{mode: True})
    for module in parts:
        home = "cpu" if any(module is m for m in visiting) else "meta"
        assert {t.device.type for t in module.parameters()} == {home}
    # 2. a visit (on CPU, the only real device here) runs the component and then points its
    # tensors back at the very same host storage: nothing is copied back
    pipe = OviPipeline.from_preset("tiny_1s")
    pipe = OviPipeline(
        pipe.preset, pipe.text_encoder, pipe.fusion, pipe.video_vae, pipe.audio_vae,
        pipe.vocoder, device="cpu", **{mode: True},
    )  # fmt: skip
    visiting = list(pipe._offloaded)
    assert len(visiting) == len(meta._offloaded)
    for module in visiting:
        host = [t.data_ptr() for t in [*module.parameters(), *module.buffers()]]
        with pipe._on_device(module):
            if module is pipe.text_encoder:
                assert pipe.encode_prompt("a cat", "blur", "noise")[0].shape[0] == 1
        assert [t.data_ptr() for t in [*module.parameters(), *module.buffers()]] == host


def test_text_encoder_offload_is_decided_by_the_gpu_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, `offload_text_encoder` is on below `SMALL_GPU_GIB` (a 40 GB card: all resident
    does not fit there) and off on a larger GPU or the CPU; a given value is kept."""
    from types import SimpleNamespace

    import model.pipeline as pipeline_module

    def card(gib: float) -> None:
        props = SimpleNamespace(total_memory=int(gib * 2**30))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)

    cuda = torch.device("cuda", 0)
    card(39.4)  # an A100 40GB
    assert pipeline_module._small_gpu(cuda)
    card(79.1)  # an H100 80GB
    assert not pipeline_module._small_gpu(cuda)
    assert not pipeline_module._small_gpu(torch.device("cpu"))
    runtime, _, _ = pipeline_module._plan(None, None, {"device": "cpu"})
    assert runtime.offload_text_encoder is False
    runtime, _, _ = pipeline_module._plan(
        None, None, {"device": "cpu", "offload_text_encoder": True}
    )
    assert runtime.offload_text_encoder is True
