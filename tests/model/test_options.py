"""model/options.py: RuntimeOptions, spelled once, refuse bad combinations; `load_pipeline`."""

import dataclasses

import pytest

from model.optimize import PLAIN_PATH, FastPath
from model.options import ModelSource, RuntimeOptions, option_fields
from model.pipeline import OviPipeline, load_pipeline


def test_every_option_says_what_it_does():
    for f, _ in option_fields(RuntimeOptions):
        assert f.metadata["help"], f.name


def test_replace_drops_values_not_given():
    base = RuntimeOptions(cpu_offload=True)
    assert base.replace(cpu_offload=None, batch_cfg=True) == RuntimeOptions(
        cpu_offload=True, batch_cfg=True
    )
    assert RuntimeOptions.from_mapping({"fp8": True, "unrelated": 1}) == RuntimeOptions(fp8=True)


def test_bad_combinations_are_value_errors():
    with pytest.raises(ValueError, match="fp8 compute needs a CUDA GPU"):
        RuntimeOptions(device="cpu", fp8_compute=True)
    with pytest.raises(ValueError, match="dtype must be one of"):
        RuntimeOptions(dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RuntimeOptions().replace(no_such_knob=True)


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RuntimeOptions().cpu_offload = True  # type: ignore[misc]


def test_load_pipeline_resolves_the_fast_path_once_inside():
    pipe = load_pipeline("tiny_1s", RuntimeOptions(batch_cfg=True, dtype="float32"))
    assert isinstance(pipe, OviPipeline) and pipe.preset.name == "tiny_1s"
    assert pipe.runtime.batch_cfg and pipe.fast_path == dataclasses.replace(
        PLAIN_PATH, batch_cfg=True
    )
    assert pipe.device.type == "cpu"  # random presets default to the CPU


def test_load_pipeline_real_variant_names_the_missing_file(tmp_path):
    from model.errors import WeightFileMissingError

    with pytest.raises(WeightFileMissingError, match="make weights VARIANT=960x960_5s"):
        load_pipeline(ModelSource("960x960_5s", tmp_path), RuntimeOptions(), device="cpu")


def test_explicit_transform_plan_replaces_the_resolution():
    pipe = OviPipeline.from_preset("tiny_1s", transforms=FastPath(compile=False))
    assert pipe.fast_path is not None and pipe.fast_path.fuse_projections
