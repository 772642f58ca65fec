"""The approximate modes of issue 14: few-step preset, step caching, 8-bit block linears.

DiT passes are counted by wrapping `FusionModel.forward` (independently of the pipeline's own
counter, which is checked against it). Quality figures live in `python -m bench.quality`."""

from __future__ import annotations

import re

import pytest
import torch

from cli.main import main
from model.convert.fusion import load_fusion, random_fusion_state
from model.errors import WeightFileMissingError
from model.optimize.quantize import Fp8RowLinear, Int8Linear, quantize_blocks, weight_bytes
from model.optimize.step_cache import ForwardCount
from model.options import RuntimeOptions
from model.pipeline import OviPipeline, denoise
from model.presets import fast_preset, get_preset
from model.weights import resolve_files, variant_files

TINY = get_preset("tiny").config.fusion
STATE = random_fusion_state(TINY, 1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py


def _model():
    return load_fusion(
        {k: v.clone() for k, v in STATE.items()}, TINY, source="random", dtype=torch.float32
    )


def _latents(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 48, 3, 4, 4, generator=g),  # video
        torch.randn(1, 13, 20, generator=g),  # audio
        torch.randn(1, 7, 32, generator=g),  # positive text
        torch.randn(1, 6, 32, generator=g),  # video negative
        torch.randn(1, 5, 32, generator=g),  # audio negative
    )


class Counted:
    """Counts the calls of a model's forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        forward = model.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return forward(*args, **kwargs)

        model.forward = counted


def test_fast_mode_six_steps_one_dit_pass_each():
    pipe = OviPipeline.from_preset("tiny_1s", fast=True)  # random weights: no LoRA to merge
    params = pipe.preset.sampling
    assert (params.steps, params.shift) == (6, 6.0)
    assert params.video_guidance_scale == params.audio_guidance_scale == 1.0
    counted, count, steps = Counted(pipe.fusion), ForwardCount(), []
    with torch.no_grad():
        denoise(
            pipe.fusion, *_latents(), params, forwards=count, callback=lambda s: steps.append(s)
        )
    assert counted.calls == 6 and len(steps) == 6
    assert count.as_metrics() == {"dit_forwards": 6, "dit_forwards_skipped": 0}


def test_fast_mode_ten_steps_for_ten_seconds_and_its_lora_file(tmp_path):
    assert fast_preset(get_preset("960x960_10s")).sampling.steps == 10
    assert fast_preset(get_preset("960x960_5s")).sampling.steps == 6
    files = variant_files("720x720_5s", fast=True)
    assert (files[-1].repo, files[-1].path) == (
        "DeepBeepMeep/Wan2.2",
        "loras_accelerators/Wan2_2_5B_FastWanFullAttn_lora_rank_128_bf16.safetensors",
    )
    for spec in files[:-1]:  # every other file present: the LoRA is what is missing
        path = tmp_path / spec.local
        (path / "x" if spec.folder else path).parent.mkdir(parents=True, exist_ok=True)
        (path / "x" if spec.folder else path).write_bytes(b"")
    resolve_files(tmp_path, "720x720_5s")  # the plain mode needs no LoRA
    with pytest.raises(WeightFileMissingError, match="ovi weights --variant 720x720_5s .*--fast"):
        resolve_files(tmp_path, "720x720_5s", fast=True)


def test_cache_threshold_zero_is_bit_equal_to_no_cache():
    model, params = _model(), get_preset("tiny").sampling.replace(steps=6)
    with torch.no_grad():
        plain = denoise(model, *_latents(), params)
        zero_count = ForwardCount()
        zero = denoise(model, *_latents(), params, cache_threshold=0.0, forwards=zero_count)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))
    assert zero_count.as_metrics() == {"dit_forwards": 12, "dit_forwards_skipped": 0}


def test_cache_skips_middle_steps_and_counts_them():
    model, params = _model(), get_preset("tiny").sampling.replace(steps=8)
    counted, count = Counted(model), ForwardCount()
    with torch.no_grad():
        plain = denoise(model, *_latents(), params)
        calls_plain = counted.calls
        cached = denoise(model, *_latents(), params, cache_threshold=100.0, forwards=count)
    # warm-up (2 steps) and the last step always run; with a huge threshold the rest is reused
    assert (count.run, count.skipped) == (6, 10)
    assert counted.calls - calls_plain == count.run
    for a, b in zip(cached, plain, strict=True):
        assert torch.isfinite(a).all() and 0 < float((a - b).norm() / b.norm()) < 1


@pytest.mark.parametrize(
    ("mode", "cls", "bound"), [("int8", Int8Linear, 2e-2), ("fp8_row", Fp8RowLinear, 1.5e-1)]
)
def test_8bit_block_linears_error_and_memory(mode, cls, bound):
    """Bounds: about 2x the errors measured on this model (int8 1.0e-2, fp8_row 6.4e-2 on the
    audio output, per `bench.quality` against bf16)."""
    ref_model, model = _model(), _model()
    before = weight_bytes(model)
    quantize_blocks(model, mode)
    assert any(isinstance(m, cls) for m in model.modules())
    assert not any(type(m) is torch.nn.Linear for m in model.video_model.blocks.modules())
    assert weight_bytes(model) < before
    video, audio, text, *_ = _latents()
    t = torch.tensor([700.0])
    with torch.no_grad():
        out = model(video, audio, t, text, text)
        ref = ref_model(video, audio, t, text, text)
    for a, b in zip(out, ref, strict=True):
        assert float((a - b).norm() / b.norm()) < bound


def test_int8_dequantisation_is_exact_per_channel():
    linear = torch.nn.Linear(16, 8)
    q = Int8Linear(linear)
    w = q.dequantized(torch.float32)
    assert torch.all((w - linear.weight).abs() <= q.weight_scale / 2 + 1e-7)
    assert torch.equal(q.weight.abs().amax(dim=1), torch.full((8,), 127, dtype=torch.int8))


def test_bad_mode_combinations_are_refused():
    with pytest.raises(ValueError, match="cache_threshold must be >= 0"):
        RuntimeOptions(cache_threshold=-1)
    with pytest.raises(ValueError, match="quantize must be one of"):
        RuntimeOptions(quantize="int4")
    with pytest.raises(ValueError, match="not combined with block_offload"):
        RuntimeOptions(quantize="int8", block_offload=True)


def test_cli_fast_with_cache_reports_forwards(tmp_path, capsys):
    argv = ["generate", "--preset", "tiny_1s", "--prompt", "x", "--out", str(tmp_path / "o.mp4")]
    assert main([*argv, "--fast", "--cache-threshold", "100", "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # 6 steps of one pass; steps 1, 2 and 6 run, 3-5 reuse the cache
    assert re.search(r"DiT forwards 3 run, 3 skipped, [0-9.]+ s$", line), line
    assert (tmp_path / "o.mp4").stat().st_size > 0


def test_ovi_weights_fast_lists_the_fastwan_lora(tmp_path, capsys):
    argv = ["weights", "--variant", "720x720_5s", "--dir", str(tmp_path), "--list"]
    assert main(argv) == 0
    assert "FastWan" not in capsys.readouterr().out
    assert main([*argv, "--fast"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(
        "DeepBeepMeep/Wan2.2:loras_accelerators/Wan2_2_5B_FastWanFullAttn_lora_rank_128_bf16"
    )
