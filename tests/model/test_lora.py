"""model/lora.py: LoRA files in every published key format, generated here for the tiny preset.

A merged LoRA must give exactly the model whose weights were changed by hand (W += s * a/r * B A),
and the unmerged (per-request) form the same output to float rounding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cli.main import main
from model.convert.fusion import load_fusion, random_fusion_state
from model.lora import (
    LoraError,
    LoraSpec,
    apply_loras,
    attach_loras,
    load_lora,
    set_lora_scales,
)
from model.presets import get_preset

TINY = get_preset("tiny").config.fusion  # dim 64, ffn 128, 3 layers
RANK = 4
STATE = random_fusion_state(TINY, 1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py


def _model():
    state = {k: v.clone() for k, v in STATE.items()}
    return load_fusion(state, TINY, source="random", dtype=torch.float32)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return dict(
        video=torch.randn(1, 48, 5, 4, 6, generator=g),
        audio=torch.randn(1, 23, 20, generator=g),
        t=torch.full((1,), 731, dtype=torch.int64),
        video_context=torch.randn(1, 7, 32, generator=g),
        audio_context=torch.randn(1, 5, 32, generator=g),
    )


def _pair(out: int, inp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, inp, generator=g) * 0.1, torch.randn(out, RANK, generator=g) * 0.1


# (module of the model, how the format spells it, down key, up key, alpha key or None)
FORMATS = {
    "peft_diffusion_model": lambda m: (
        f"diffusion_model.{m}.lora_A.weight", f"diffusion_model.{m}.lora_B.weight", None
    ),
    "comfy_diffusion_model_alpha": lambda m: (
        f"diffusion_model.{m}.lora_down.weight", f"diffusion_model.{m}.lora_up.weight",
        f"diffusion_model.{m}.alpha",
    ),
    "kohya_lora_unet": lambda m: (
        f"lora_unet_{m.replace('.', '_')}.lora_down.weight",
        f"lora_unet_{m.replace('.', '_')}.lora_up.weight",
        f"lora_unet_{m.replace('.', '_')}.alpha",
    ),
}  # fmt: skip
WAN_MODULES = ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.2.ffn.0")


def _write_lora(path, modules, fmt: str, alpha: float = 8.0, seed: int = 0) -> dict:
    """A LoRA file in format `fmt` for Wan module names; returns {module: (down, up, scale)}."""
    state, expected = {}, {}
    model = _model()
    for i, name in enumerate(modules):
        weight = model.get_submodule(f"video_model.{name}").weight
        down, up = _pair(weight.shape[0], weight.shape[1], seed + i)
        k_down, k_up, k_alpha = FORMATS[fmt](name)
        state[k_down], state[k_up] = down, up
        if k_alpha is not None:
            state[k_alpha] = torch.tensor(alpha)
        expected[f"video_model.{name}"] = (down, up, alpha / RANK if k_alpha else 1.0)
    save_file(state, str(path))
    return expected


def _by_hand(changes: list[tuple[dict, float]]):
    model = _model()
    with torch.no_grad():
        for expected, strength in changes:
            for name, (down, up, rank_scale) in expected.items():
                weight = model.get_submodule(name).weight
                weight.copy_(weight + strength * rank_scale * (up @ down))
    return model


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_merged_lora_equals_hand_modified_weights(tmp_path, fmt):
    expected = _write_lora(tmp_path / "l.safetensors", WAN_MODULES, fmt)
    merged = _model()
    (lora,) = apply_loras(merged, [LoraSpec(str(tmp_path / "l.safetensors"), 0.7)])
    assert lora.towers == ["video_model"]  # a Wan LoRA goes to the video tower
    hand = _by_hand([(expected, 0.7)])
    for name, param in hand.state_dict().items():
        assert torch.equal(merged.state_dict()[name], param), name
    with torch.no_grad():
        out, ref = merged(**_inputs()), hand(**_inputs())
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))


def test_several_loras_ovi_native_audio_tower_and_diffusers_names(tmp_path):
    """Two files at once: an Ovi-native audio-tower LoRA and a diffusers-named video one."""
    model = _model()
    audio_w = model.get_submodule("audio_model.blocks.1.self_attn.k").weight
    down_a, up_a = _pair(audio_w.shape[0], audio_w.shape[1], 5)
    save_file(
        {
            "audio_model.blocks.1.self_attn.k.lora_A.weight": down_a,
            "audio_model.blocks.1.self_attn.k.lora_B.weight": up_a,
        },
        str(tmp_path / "audio.safetensors"),
    )
    video_w = model.get_submodule("video_model.blocks.2.cross_attn.q").weight
    down_v, up_v = _pair(video_w.shape[0], video_w.shape[1], 6)
    save_file(
        {
            "transformer.blocks.2.attn2.to_q.lora_A.weight": down_v,
            "transformer.blocks.2.attn2.to_q.lora_B.weight": up_v,
            "transformer.blocks.2.attn2.to_q.alpha": torch.tensor(2.0),
        },
        str(tmp_path / "video.safetensors"),
    )
    specs = [f"{tmp_path / 'audio.safetensors'}:0.5", f"{tmp_path / 'video.safetensors'}"]
    loras = apply_loras(model, specs)
    assert [lora.towers for lora in loras] == [["audio_model"], ["video_model"]]
    hand = _by_hand(
        [
            ({"audio_model.blocks.1.self_attn.k": (down_a, up_a, 1.0)}, 0.5),
            ({"video_model.blocks.2.cross_attn.q": (down_v, up_v, 2.0 / RANK)}, 1.0),
        ]
    )
    for name, param in hand.state_dict().items():
        assert torch.equal(model.state_dict()[name], param), name


def test_unmerged_lora_switches_per_request(tmp_path):
    expected = _write_lora(tmp_path / "l.safetensors", WAN_MODULES, "kohya_lora_unet")
    model = _model()
    attach_loras(model, {"style": load_lora(tmp_path / "l.safetensors", model)})
    base, merged = _model(), _by_hand([(expected, 0.8)])
    with torch.no_grad():
        set_lora_scales(model, {})  # off: the base model exactly
        assert all(
            torch.equal(a, b) for a, b in zip(model(**_inputs()), base(**_inputs()), strict=True)
        )
        set_lora_scales(model, {"style": 0.8})
        for a, b in zip(model(**_inputs()), merged(**_inputs()), strict=True):
            assert float((a - b).norm() / b.norm()) < 1e-5


def test_unknown_keys_are_named(tmp_path):
    _write_lora(tmp_path / "l.safetensors", WAN_MODULES, "peft_diffusion_model")
    state = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(RANK, 64),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(64, RANK),
        "diffusion_model.blocks.7.self_attn.q.lora_A.weight": torch.zeros(RANK, 64),
    }
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraError, match=r"1 key\(s\) match no weight: diffusion_model\.blocks\.7"):
        load_lora(tmp_path / "bad.safetensors", _model())


def test_lora_for_another_architecture_is_refused(tmp_path):
    # Wan2.1-14B-like: the same key names, dim 5120
    state = {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, 5120),
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, RANK),
    }
    save_file(state, str(tmp_path / "wan14b.safetensors"))
    with pytest.raises(LoraError, match="another architecture: video_model.blocks.0.self_attn.q"):
        load_lora(tmp_path / "wan14b.safetensors", _model())
    # an SDXL LoRA: nothing matches
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
        str(tmp_path / "sdxl.safetensors"),
    )
    with pytest.raises(LoraError, match="not a LoRA for Ovi or Wan2.2-5B"):
        load_lora(tmp_path / "sdxl.safetensors", _model())


def test_spec_parsing():
    assert LoraSpec.parse("a/b.safetensors") == LoraSpec("a/b.safetensors", 1.0)
    assert LoraSpec.parse("a/b.safetensors:0.25") == LoraSpec("a/b.safetensors", 0.25)
    assert LoraSpec.parse("c:/x:y.safetensors") == LoraSpec("c:/x:y.safetensors", 1.0)


def test_cli_unknown_key_is_one_error_line_and_exit_2(tmp_path, capsys):
    save_file(
        {"diffusion_model.blocks.0.self_attn.nope.lora_A.weight": torch.zeros(RANK, 64)},
        str(tmp_path / "bad.safetensors"),
    )
    argv = ["generate", "--preset", "tiny_1s", "--prompt", "x", "--out", str(tmp_path / "o.mp4")]
    assert main([*argv, "--lora", f"{tmp_path / 'bad.safetensors'}:0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "diffusion_model.blocks.0.self_attn.nope.lora_A.weight" in err[0]
    assert not (tmp_path / "o.mp4").exists()


def test_full_differences_reach_parameters_and_biases(tmp_path):
    """`diff` / `diff_b` keys (Kijai-style extracted LoRAs), Wan names: the block modulation
    table (Ovi: `modulation.modulation`), the head's table, a norm and a bias."""
    model = _model()
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(3)
    targets = {
        "diffusion_model.blocks.0.modulation.diff": "video_model.blocks.0.modulation.modulation",
        "diffusion_model.head.modulation.diff": "video_model.head.modulation",
        "diffusion_model.blocks.1.norm3.diff": "video_model.blocks.1.norm3.weight",
        "diffusion_model.blocks.1.self_attn.q.diff_b": "video_model.blocks.1.self_attn.q.bias",
    }
    state = {k: torch.randn(params[v].shape, generator=g) for k, v in targets.items()}
    save_file(state, str(tmp_path / "diff.safetensors"))
    apply_loras(model, [f"{tmp_path / 'diff.safetensors'}:0.5"])
    hand = _model()
    with torch.no_grad():
        for key, name in targets.items():
            dict(hand.named_parameters())[name].add_(0.5 * state[key])
    for name, param in hand.state_dict().items():
        assert torch.equal(model.state_dict()[name], param), name


def test_pipeline_merges_runtime_loras_before_the_fast_path(tmp_path):
    from model.pipeline import OviPipeline

    expected = _write_lora(tmp_path / "l.safetensors", WAN_MODULES, "peft_diffusion_model")
    plain = OviPipeline.from_preset("tiny_1s", seed=3)
    pipe = OviPipeline.from_preset("tiny_1s", seed=3, lora=[f"{tmp_path / 'l.safetensors'}:2"])
    assert [lora.towers for lora in pipe.loras] == [["video_model"]]
    for name, (down, up, rank_scale) in expected.items():
        before = plain.fusion.get_submodule(name).weight
        after = pipe.fusion.get_submodule(name).weight
        assert torch.equal(after, before + 2 * rank_scale * (up @ down))


def test_pipeline_adapters_switch_loras_per_request(tmp_path):
    """`OviPipeline.adapters`: a request's LoRA is attached unmerged on first use, on at its
    strength inside the block (the merged model's output to rounding), off after (the base
    model's output exactly); a changed file is read again; fast mode on a random-weight preset
    has no FastWan file to add."""
    from model.pipeline import OviPipeline

    path = tmp_path / "l.safetensors"
    _write_lora(path, WAN_MODULES, "comfy_diffusion_model_alpha")
    pipe = OviPipeline.from_preset("tiny_1s", seed=3)
    merged = OviPipeline.from_preset("tiny_1s", seed=3, lora=[f"{path}:0.6"])
    inputs = _inputs()
    with torch.no_grad():
        base = pipe.fusion(**inputs)
        with pipe.adapters([LoraSpec(str(path), 0.6)]):
            on = pipe.fusion(**inputs)
        off = pipe.fusion(**inputs)
        want = merged.fusion(**inputs)
        for a, b in zip(on, want, strict=True):
            assert float((a - b).norm() / b.norm()) < 1e-5
        assert all(torch.equal(a, b) for a, b in zip(off, base, strict=True))
        _write_lora(path, WAN_MODULES, "comfy_diffusion_model_alpha", seed=9)  # replaced
        with pipe.adapters([LoraSpec(str(path), 0.6)]):
            changed = pipe.fusion(**inputs)
        assert not torch.allclose(changed[0], on[0])
        with pipe.adapters([], fast=True):  # tiny: the sampling preset alone
            assert all(torch.equal(a, b) for a, b in zip(pipe.fusion(**inputs), base, strict=True))
    with pytest.raises(LoraError, match="LoRA file not found"):
        with pipe.adapters([LoraSpec(str(tmp_path / "missing.safetensors"))]):
            pass
