"""Strict loading: every mismatch is an error that names the keys and the file."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from model.loading import (
    CheckpointMismatchError,
    WeightFileMissingError,
    load_strict,
    meta_state_dict,
    read_checkpoint,
)


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
