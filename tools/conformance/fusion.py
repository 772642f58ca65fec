"""Fusion case: `FusionModel` forward (t2v / i2v / skip-layer variants), taps and RoPE tables.

Loads `weights.safetensors` through `load_fusion` (the pipeline's path) in float32 on CPU, runs
every variant of `case.json`, and compares every reference tensor in `outputs.safetensors`:
`<variant>.video_pred/audio_pred`, `<variant>.taps.*` and `rope.{video,audio}_freqs`. A reference
tensor this runner does not produce is a failed check. The reference is unbatched: inputs get a
batch dim of 1, predictions lose it (taps keep it, as the reference does).

The model has no test hooks: `record_taps` reads the intermediates from outside, through the
per-layer function every forward calls (`FusionModel.layer_fn`), and `rope_table` rebuilds the
official precomputed tables from the model's own RoPE frequencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from model.config import FusionConfig, TowerConfig
from model.convert.fusion import load_fusion
from model.loading import read_checkpoint
from model.modules.fusion import FusionModel, TowerInputs, rope_axis_angles, rope_split

from . import Check, compare, exact, load_case_json

ROPE_TABLE_LEN = 1024  # rows of the official precomputed tables (max position per axis)


def fusion_config(case: dict) -> FusionConfig:
    """The `FusionConfig` of a fusion case.json (its official `video_config` / `audio_config`)."""
    return FusionConfig(
        video=TowerConfig.from_official(case["video_config"]),
        audio=TowerConfig.from_official(case["audio_config"]),
    )


def rope_table(config: TowerConfig, length: int = ROPE_TABLE_LEN) -> torch.Tensor:
    """The official precomputed table as (cos, sin), float64: video [length, d/2, 2] (every
    axis part over positions 0..length-1), audio [length, n_rot, 2] (only the rotated pairs)."""
    pf, ph, pw = rope_split(config.head_dim)
    if config.modality == "video":
        angles = torch.cat([rope_axis_angles(length, p) for p in (pf, ph, pw)], dim=1)
    else:
        angles = rope_axis_angles(length, pf, config.rope_scale)
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


def _embedding_taps(name: str, inputs: TowerInputs) -> dict[str, torch.Tensor]:
    """One tower's embedding-stage intermediates, per token ([B, L, ...]) as the reference has."""
    n = inputs.x.shape[1]

    def per_token(m: torch.Tensor) -> torch.Tensor:  # [B, U, ...] -> [B, L, ...]
        return (m if inputs.index is None else m[:, inputs.index]).expand(-1, n, *m.shape[2:])

    return {
        f"{name}_tokens_embedded": inputs.x,
        f"{name}_time_emb": per_token(inputs.e),
        f"{name}_time_proj": per_token(inputs.e0),
        f"{name}_context_emb": inputs.context,
    }


@contextmanager
def record_taps(model: FusionModel) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every forward of `model` fills the yielded dict with the reference's taps:
    `{video,audio}_{tokens_embedded,time_emb,time_proj,context_emb}` and `block{i}.{video,
    audio}_out` for every layer that ran (a skipped layer has none). It wraps the model's
    per-layer function (whatever it is: plain or compiled) and restores it on exit."""
    taps: dict[str, torch.Tensor] = {}
    layer_of = {id(block): i for i, block in enumerate(model.video_model.blocks)}
    inner = model.layer_fn

    def layer(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """`fusion_layer`'s arguments: video_block, audio_block, v, a, vid, aud."""
        video_block, vid, aud = args[0], args[4], args[5]
        if not taps:  # the first layer of a forward sees the embedding stage's outputs
            taps.update(_embedding_taps("video", vid) | _embedding_taps("audio", aud))
        v, a = inner(*args)
        i = layer_of[id(video_block)]
        taps[f"block{i}.video_out"], taps[f"block{i}.audio_out"] = v, a
        return v, a

    model.layer_fn = layer
    try:
        yield taps
    finally:
        model.layer_fn = inner


def run_variant(
    model: FusionModel, inputs: dict[str, torch.Tensor], args: dict, taps: bool = True
) -> dict[str, torch.Tensor]:
    """One variant (`first_frame_is_clean`, `slg_layer` from `args`) on the case's unbatched
    inputs: {"video_pred", "audio_pred"} without the batch dim, plus "taps.*" when `taps`."""
    with record_taps(model) as recorded:
        video, audio = model(
            inputs["video_latent"][None],
            inputs["audio_latent"][None],
            inputs["t"],
            inputs["vid_context"][None],
            inputs["audio_context"][None],
            first_frame_is_clean=bool(args["first_frame_is_clean"]),
            slg_layer=args["slg_layer"],
        )
    out = {"video_pred": video[0], "audio_pred": audio[0]}
    return out | ({f"taps.{k}": v for k, v in recorded.items()} if taps else {})


def run(case_dir: Path) -> list[Check]:
    case = load_case_json(case_dir)
    config = fusion_config(case)
    weights = case_dir / "weights.safetensors"
    model = load_fusion(
        read_checkpoint(weights), config, source=str(weights), dtype=torch.float32, device="cpu"
    )
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    refs = load_file(str(case_dir / "outputs.safetensors"))

    produced: dict[str, torch.Tensor] = {}
    for variant, args in case["variants"].items():
        produced |= {f"{variant}.{k}": v for k, v in run_variant(model, inputs, args).items()}
    for key, tower in (("rope.video_freqs", config.video), ("rope.audio_freqs", config.audio)):
        length = refs[key].shape[0] if key in refs else ROPE_TABLE_LEN
        produced[key] = rope_table(tower, length)

    checks = [compare(name, produced[name], ref) for name, ref in refs.items() if name in produced]
    checks += [exact(name, False, "not produced") for name in refs if name not in produced]
    return checks
