"""The weight manifest and `download`, with the hub mocked at its boundary."""

import pytest

from model import weights
from model.loading import WeightFileMissingError
from model.presets import PRESETS


def test_every_real_variant_has_its_files():
    for name, preset in PRESETS.items():
        if preset.random_weights:
            continue
        files = weights.variant_files(name)
        assert files[0].key == preset.fusion_file
        assert {f.key for f in files[1:]} == {
            "t5",
            "tokenizer",
            "video_vae",
            "audio_vae",
            "vocoder",
        }
    assert weights.variant_files("720x720_5s", fp8=True)[0].path == "model_fp8_e4m3fn.safetensors"
    with pytest.raises(ValueError, match="float8"):
        weights.variant_files("960x960_5s", fp8=True)


def test_missing_file_error_names_file_and_command(tmp_path):
    with pytest.raises(WeightFileMissingError) as err:
        weights.resolve_files(tmp_path, "960x960_10s")
    assert "model_960x960_10s.safetensors" in str(err.value)
    assert f"make weights VARIANT=960x960_10s WEIGHTS_DIR={tmp_path}" in str(err.value)


def test_download_fetches_only_missing_files_into_the_ovi_layout(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_file(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        target = tmp_path / local_dir / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        return str(target)

    def fake_snapshot(repo_id, allow_patterns, local_dir):
        calls.append((repo_id, allow_patterns[0]))
        folder = tmp_path / local_dir / allow_patterns[0].rstrip("/*")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spiece.model").write_bytes(b"x")
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(weights, "_hub_unreachable", lambda: "")  # the hub is faked: "online"
    (tmp_path / "MMAudio/ext_weights").mkdir(parents=True)
    (tmp_path / "MMAudio/ext_weights/v1-16.pth").write_bytes(b"already here")
    paths = weights.download("720x720_5s", tmp_path)
    assert ("hkchengrex/MMAudio", "ext_weights/v1-16.pth") not in calls  # complete files are kept
    assert ("chetwinlow1/Ovi", "model.safetensors") in calls
    assert ("Wan-AI/Wan2.2-TI2V-5B", "google/umt5-xxl/*") in calls
    assert paths["fusion"] == tmp_path / "Ovi/model.safetensors"
    assert paths["vocoder"] == tmp_path / "MMAudio/ext_weights/best_netG.pt"


def test_manifest_is_package_data_of_model():
    """Read through importlib.resources, so a non-editable install (`pip install .`) has it."""
    from importlib import resources

    assert resources.files("model").joinpath(weights.MANIFEST).is_file()
    assert set(weights.load_manifest()["variants"]) >= {"720x720_5s", "960x960_5s", "960x960_10s"}
