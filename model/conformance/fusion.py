"""Fusion case: `FusionModel` forward (t2v / i2v / skip-layer variants), taps and RoPE tables.

Loads `weights.safetensors` through `load_fusion` (the pipeline's path) in float32 on CPU, runs
every variant of `case.json`, and compares every reference tensor in `outputs.safetensors`:
`<variant>.video_pred/audio_pred`, `<variant>.taps.*` and `rope.{video,audio}_freqs`. A reference
tensor this runner does not produce is a failed check. The reference is unbatched: inputs get a
batch dim of 1, predictions lose it (taps keep it, as the reference does).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import FusionConfig, TowerConfig
from ..convert.fusion import load_fusion
from ..loading import read_checkpoint
from ..modules.fusion import rope_table
from . import Check, compare, exact, load_case_json


def run(case_dir: Path) -> list[Check]:
    case = load_case_json(case_dir)
    config = FusionConfig(
        video=TowerConfig.from_official(case["video_config"]),
        audio=TowerConfig.from_official(case["audio_config"]),
    )
    weights = case_dir / "weights.safetensors"
    model = load_fusion(
        read_checkpoint(weights), config, source=str(weights), dtype=torch.float32, device="cpu"
    )
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    refs = load_file(str(case_dir / "outputs.safetensors"))

    produced: dict[str, torch.Tensor] = {}
    for variant, args in case["variants"].items():
        taps: dict[str, torch.Tensor] = {}
        video, audio = model(
            inputs["video_latent"][None],
            inputs["audio_latent"][None],
            inputs["t"],
            inputs["vid_context"][None],
            inputs["audio_context"][None],
            first_frame_is_clean=bool(args["first_frame_is_clean"]),
            slg_layer=args["slg_layer"],
            taps=taps,
        )
        produced[f"{variant}.video_pred"] = video[0]
        produced[f"{variant}.audio_pred"] = audio[0]
        produced.update({f"{variant}.taps.{k}": v for k, v in taps.items()})
    for key, tower in (("rope.video_freqs", config.video), ("rope.audio_freqs", config.audio)):
        length = refs[key].shape[0] if key in refs else 1024
        produced[key] = rope_table(tower, length)

    checks = [compare(name, produced[name], ref) for name, ref in refs.items() if name in produced]
    checks += [exact(name, False, "not produced") for name in refs if name not in produced]
    return checks
