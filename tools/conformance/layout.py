"""Layout cases: the real full-size checkpoints' key names and shapes (no weights).

Each JSON is turned into shape-only meta tensors and handed to the SAME loader (converter +
strict load) the pipeline uses for the real file, with the component built at full size on the
meta device. A pass means the loader consumes exactly the listed keys with exactly those shapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from model.config import AudioVAEConfig, FusionConfig, T5Config, VocoderConfig, WanVAEConfig
from model.loading import meta_state_dict

from . import Check, exact


def _fusion(state: dict) -> None:
    from model.convert.fusion import load_fusion

    load_fusion(
        state, FusionConfig(), source="layout/fusion.json", dtype=torch.bfloat16, device="meta"
    )


def _t5(state: dict) -> None:
    from model.convert.umt5 import load_t5

    load_t5(
        state, T5Config(), source="layout/t5_umt5_xxl.json", dtype=torch.bfloat16, device="meta"
    )


def _wan_vae(state: dict) -> None:
    from model.convert.wan_vae import load_wan_vae

    load_wan_vae(state, WanVAEConfig(), source="layout/wan22_vae.json", device="meta")


def _audio_vae(state: dict) -> None:
    from model.convert.mmaudio import load_audio_vae

    load_audio_vae(state, AudioVAEConfig(), source="layout/mmaudio_vae_16k.json", device="meta")


def _vocoder(state: dict) -> None:
    from model.convert.mmaudio import load_vocoder

    load_vocoder(state, VocoderConfig(), source="layout/bigvgan_16k.json", device="meta")


def _legacy_weight_norm(state: dict) -> dict:
    """The same dict with torch's legacy weight-norm names (weight_g / weight_v)."""
    renamed = {}
    for key, value in state.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        renamed[key] = value
    return renamed


# layout file -> (loader, the file's storage dtype)
LOADERS: dict[str, tuple[Callable[[dict], None], torch.dtype]] = {
    "fusion.json": (_fusion, torch.bfloat16),
    "t5_umt5_xxl.json": (_t5, torch.bfloat16),
    "wan22_vae.json": (_wan_vae, torch.float32),
    "mmaudio_vae_16k.json": (_audio_vae, torch.float32),
    "bigvgan_16k.json": (_vocoder, torch.float32),
}


def _check_one(name: str, layout: dict, state: dict, loader: Callable[[dict], None]) -> Check:
    tensors, params = len(state), sum(t.numel() for t in state.values())
    detail = f"{tensors} tensors, {params:,} elements"
    if tensors != layout["num_tensors"] or params != layout["num_params"]:
        return exact(
            name,
            False,
            f"{detail}; the JSON header says {layout['num_tensors']} / {layout['num_params']:,}",
        )
    try:
        loader(state)
    except Exception as exc:  # the loader's own error names the keys
        return exact(name, False, f"{detail}; {type(exc).__name__}: {exc}")
    return exact(name, True, f"{detail} consumed exactly")


def run(case_dir: Path) -> list[Check]:
    checks = []
    for path in sorted(case_dir.glob("*.json")):
        layout = json.loads(path.read_text())
        if path.name not in LOADERS:
            checks.append(exact(path.name, False, "no loader knows this layout"))
            continue
        loader, dtype = LOADERS[path.name]
        state = meta_state_dict(layout["tensors"], dtype)
        checks.append(_check_one(path.name, layout, state, loader))
        if path.name == "bigvgan_16k.json":  # the file may use either weight-norm spelling
            checks.append(
                _check_one(
                    f"{path.name}[weight_g/weight_v]", layout, _legacy_weight_norm(state), loader
                )
            )
    return checks
