"""Strict loading: every mismatch is an error that names the keys and the file, for every
checkpoint family (one shared contract) and for the load skeleton itself."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from model.convert.fusion import FUSION
from model.convert.mmaudio import AUDIO_VAE, VOCODER, random_audio_vae_state, random_vocoder_state
from model.convert.umt5 import UMT5
from model.convert.wan_vae import WAN_VAE
from model.loading import (
    CheckpointFamily,
    CheckpointMismatchError,
    WeightFileMissingError,
    load_strict,
    meta_state_dict,
    random_state,
    read_checkpoint,
)
from model.presets import get_preset


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)


def _state() -> dict[str, torch.Tensor]:
    return {k: torch.randn_like(v) for k, v in Tiny().state_dict().items()}


def _meta_model() -> Tiny:
    with torch.device("meta"):
        return Tiny()


def test_loads_by_assignment_with_no_copy():
    state = _state()
    model = load_strict(_meta_model(), state, "mem")
    assert model.proj.weight.data_ptr() == state["proj.weight"].data_ptr()


def test_missing_key_names_key_and_source():
    state = _state()
    del state["norm.bias"]
    with pytest.raises(
        CheckpointMismatchError, match=r"ckpt\.safetensors.*1 missing key\(s\): norm\.bias"
    ) as err:
        load_strict(_meta_model(), state, "ckpt.safetensors")
    assert err.value.missing == ["norm.bias"]


def test_unexpected_key_is_an_error():
    state = _state() | {"proj.extra": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match="unexpected key.*proj.extra"):
        load_strict(_meta_model(), state, "f")


def test_wrong_shape_names_both_shapes():
    state = _state() | {"proj.weight": torch.zeros(3, 5)}
    with pytest.raises(
        CheckpointMismatchError, match=r"proj\.weight \(file \[3, 5\], model \[3, 4\]\)"
    ):
        load_strict(_meta_model(), state, "f")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(WeightFileMissingError, match="nothing.safetensors"):
        read_checkpoint(tmp_path / "nothing.safetensors")


def test_reads_safetensors_and_pth_with_inner_key(tmp_path):
    state = _state()
    save_file(state, str(tmp_path / "a.safetensors"))
    torch.save({"generator": state, "optimizer": {}}, tmp_path / "b.pt")
    for got in (
        read_checkpoint(tmp_path / "a.safetensors"),
        read_checkpoint(tmp_path / "b.pt", inner_key="generator"),
    ):
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(CheckpointMismatchError, match="generator"):
        read_checkpoint(tmp_path / "a.safetensors", inner_key="generator")


def test_dtype_cast_and_meta_layouts():
    state = {k: v.to(torch.bfloat16) for k, v in _state().items()}
    model = load_strict(_meta_model(), state, "f", dtype=torch.float32)
    assert model.proj.weight.dtype == torch.float32
    shapes = {k: list(v.shape) for k, v in Tiny().state_dict().items()}
    layout = load_strict(_meta_model(), meta_state_dict(shapes, torch.bfloat16), "layout")
    assert layout.proj.weight.is_meta


class Wrapper(nn.Module):
    """A module holding the checkpoint's network under `net`, plus a constant buffer."""

    def __init__(self, _config: object = None) -> None:
        super().__init__()
        self.net = Tiny()
        self.register_buffer("scale", torch.empty(3), persistent=False)


def _family(**changes) -> CheckpointFamily:
    fields = dict(
        name="tiny",
        build=Wrapper,
        # the official file spells "proj" as "linear"
        convert=lambda state, module, source, device: {
            k.replace("linear.", "proj."): v for k, v in state.items()
        },
        target=lambda module: module.net,
        finish=lambda module: setattr(module, "scale", torch.ones(3)),
    )
    return CheckpointFamily(**(fields | changes))


def _official() -> dict[str, torch.Tensor]:
    return {k.replace("proj.", "linear."): v for k, v in _state().items()}


def test_family_load_converts_places_and_finishes():
    state = _official()
    model = _family().load(state, None, source="f", dtype=torch.bfloat16)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.net.proj.weight.dtype == torch.bfloat16
    torch.testing.assert_close(
        model.net.proj.weight.float(), state["linear.weight"], rtol=1e-2, atol=1e-2
    )
    assert torch.equal(model.scale, torch.ones(3))  # finish ran after the assignment
    same = _family().load(state, None, source="f")  # float32 default: no copy
    assert same.net.proj.weight.data_ptr() == state["linear.weight"].data_ptr()


def test_family_load_checks_before_copying_and_names_the_source():
    state = _official()
    del state["linear.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"ckpt\.pth.*proj\.bias"):
        _family().load(state, None, source="ckpt.pth")
    with pytest.raises(ValueError, match="compute dtype"):
        _family(dtypes=(torch.float32,)).load(_official(), None, source="f", dtype=torch.float16)


def test_family_load_on_meta_allocates_nothing():
    shapes = {k: list(v.shape) for k, v in _official().items()}
    model = _family(finish=None).load(
        meta_state_dict(shapes, torch.bfloat16), None, source="layout", device="meta"
    )
    assert model.net.proj.weight.is_meta and model.net.proj.weight.dtype == torch.float32


def test_random_state_is_seeded_per_layout_order():
    shapes = {"a": (2, 3), "b": (4,)}
    init = lambda key, shape, noise: noise if key == "a" else 1 + 0 * noise  # noqa: E731
    first, again = random_state(shapes, init, seed=3), random_state(shapes, init, seed=3)
    assert all(torch.equal(first[k], again[k]) for k in shapes)
    assert torch.equal(first["b"], torch.ones(4))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(first["a"], torch.randn(2, 3, generator=g))  # one draw per key, in order
    assert random_state(shapes, init, seed=3, dtype=torch.bfloat16)["a"].dtype == torch.bfloat16


# --- the contract every checkpoint family keeps ---------------------------------------------

TINY = get_preset("tiny").config
FAMILIES = {  # family, config, random official-format state
    "fusion": (FUSION, TINY.fusion, lambda: FUSION.random_state(TINY.fusion)),
    "umT5": (UMT5, TINY.t5, lambda: UMT5.random_state(TINY.t5)),
    "wan_vae": (WAN_VAE, TINY.video_vae, lambda: WAN_VAE.random_state(TINY.video_vae)),
    "audio_vae": (AUDIO_VAE, TINY.audio_vae, lambda: random_audio_vae_state(TINY.audio_vae, 0)),
    "vocoder": (VOCODER, TINY.vocoder, lambda: random_vocoder_state(TINY.vocoder, 0)),
}
# family -> (a file key to drop, the name the error gives it, a file key to widen, its name)
EDITS = {
    "fusion": (
        "audio_model.blocks.1.cross_attn.k_fusion.weight",
        "audio_model.blocks.1.cross_attn.k_fusion.weight",
        "video_model.head.modulation",
        "video_model.head.modulation",
    ),
    "umT5": (
        "blocks.1.ffn.fc2.weight",
        "encoder.block.1.layer.1.DenseReluDense.wo.weight",
        "norm.weight",
        "encoder.final_layer_norm.weight",
    ),
    "wan_vae": ("conv2.bias", "post_quant_conv.bias", "conv1.bias", "quant_conv.bias"),
    "audio_vae": ("data_std", "data_std", "data_mean", "data_mean"),
    "vocoder": ("conv_pre.weight_g", "conv_pre.weight_g", "conv_post.bias", "conv_post.bias"),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("kind", ["missing", "unexpected", "wrong_shapes"])
def test_every_family_names_the_mismatched_key_and_the_file(name, kind):
    family, config, random_official = FAMILIES[name]
    state = random_official()
    dropped, dropped_name, widened, widened_name = EDITS[name]
    if kind == "missing":
        del state[dropped]
        key = dropped_name
    elif kind == "unexpected":
        key = "blocks.0.attn.qkv_extra.weight"
        state[key] = torch.zeros(1)
    else:
        state[widened] = torch.zeros(*state[widened].shape[:-1], state[widened].shape[-1] + 1)
        key = widened_name
    with pytest.raises(CheckpointMismatchError) as err:
        family.load(state, config, source="bad.file")
    found = getattr(err.value, kind)
    assert key in ([k for k, *_ in found] if kind == "wrong_shapes" else found)
    assert key in str(err.value) and "bad.file" in str(err.value)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_loads_its_random_state_on_meta_and_cpu(name):
    family, config, random_official = FAMILIES[name]
    state = random_official()
    layout = meta_state_dict({k: v.shape for k, v in state.items()}, torch.float32)
    assert next(family.load(layout, config, source="layout", device="meta").parameters()).is_meta
    model = family.load(state, config, source="random", dtype=torch.float32)
    assert not model.training and all(not p.is_meta for p in model.parameters())
