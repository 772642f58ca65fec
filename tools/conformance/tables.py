"""`tables/`: size rules, per-variant constants, prompt formatting, text cleaning, i2v pixels.

One exact check per JSON table (its row count in `detail`, the first mismatch named on
failure) and one rel-L2 comparison for `preprocess_pixels/`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file

from model.preprocess import (
    area_mismatch,
    image_target_size,
    preprocess_image,
    snap_hw_to_multiple_of_32,
)
from model.presets import PRESETS
from model.text import basic_clean, clean_text, format_prompt, whitespace_clean

from . import Check, compare, exact, load_case_json

LATENT_STRIDE = 16  # pixels per latent cell (Wan2.2 VAE)


def _table_check(name: str, mismatches: Iterable[str], rows: int, unit: str) -> Check:
    """Exact check over `rows` entries (`unit` says what one is); `mismatches` describes each
    failing entry."""
    failures = list(mismatches)
    if not rows:
        return exact(name, False, "no rows in the table")
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        return exact(
            name, False, f"{len(failures)}/{rows} {unit} differ; first: {failures[0]}{more}"
        )
    return exact(name, True, f"{rows} {unit}")


def _sizes(out: tuple[int, int], target: dict) -> list[str]:
    """Differences between a computed (H, W) and a table entry with H, W, latent_h, latent_w."""
    h, w = out
    got = {"H": h, "W": w, "latent_h": h // LATENT_STRIDE, "latent_w": w // LATENT_STRIDE}
    return [f"{k} {got[k]} != {target[k]}" for k in got if k in target and got[k] != target[k]]


def _i2v_mismatches(rows: list[dict]) -> Iterable[str]:
    for row in rows:
        w, h = row["image_w"], row["image_h"]
        for area, target in row["targets"].items():
            out = image_target_size(w, h, int(area))
            diffs = _sizes(out, target)
            if "resized" in target and (out != (h, w)) != target["resized"]:
                diffs.append(f"resized {out != (h, w)} != {target['resized']}")
            if diffs:
                yield f"image {w}x{h} at area {area}: {', '.join(diffs)}"


def _t2v_mismatches(rows: list[dict]) -> Iterable[str]:
    for row in rows:
        h, w = row["h"], row["w"]
        for area, target in row["targets"].items():
            diffs = _sizes(snap_hw_to_multiple_of_32(h, w, int(area)), target)
            warns = area_mismatch(h, w, int(area))
            if (
                "engine_warns_area_mismatch" in target
                and warns != target["engine_warns_area_mismatch"]
            ):
                diffs.append(f"warn {warns} != {target['engine_warns_area_mismatch']}")
            if diffs:
                yield f"h={h} w={w} at area {area}: {', '.join(diffs)}"


def _model_spec_mismatches(specs: dict) -> Iterable[str]:
    for name, spec in specs.items():
        preset = PRESETS.get(name)
        if preset is None:
            yield f"{name}: no such preset"
            continue
        ours = {
            "video_latent_length": preset.video_latent_length,
            "audio_latent_length": preset.audio_latent_length,
            "video_area": preset.video_area,
        }
        for key, value in ours.items():
            if key in spec and spec[key] != value:
                yield f"{name}.{key}: preset {value} != {spec[key]}"


def _count_targets(rows: list[dict]) -> int:
    return sum(len(row["targets"]) for row in rows)


def _resolution_checks(table: dict) -> list[Check]:
    i2v, t2v, specs = table.get("i2v", []), table.get("t2v", []), table.get("model_specs", {})
    return [
        _table_check(
            "resolution.i2v", _i2v_mismatches(i2v), _count_targets(i2v), "image x area rows"
        ),
        _table_check(
            "resolution.t2v", _t2v_mismatches(t2v), _count_targets(t2v), "size x area rows"
        ),
        _table_check(
            "resolution.model_specs", _model_spec_mismatches(specs), len(specs), "variants"
        ),
    ]


def _prompt_format_check(table: dict) -> Check:
    rows = table["rows"]

    def mismatches() -> Iterable[str]:
        for i, row in enumerate(rows):
            for variant, expected in row["formatted"].items():
                preset = PRESETS.get(variant)
                if preset is None:
                    yield f"row {i}: no preset {variant!r}"
                    continue
                got = format_prompt(row["prompt"], preset.prompt_style)
                if got != expected:
                    yield f"row {i} {variant} ({preset.prompt_style}): {got!r} != {expected!r}"

    count = sum(len(r["formatted"]) for r in rows)
    return _table_check("prompt_format", mismatches(), count, "prompt x variant rows")


# column of text_clean.json -> our function
TEXT_CLEAN_COLUMNS = {
    "t5_clean_whitespace_mode": clean_text,
    "basic_clean": basic_clean,
    "whitespace_clean": whitespace_clean,
}


def _text_clean_check(table: dict) -> Check:
    rows = table["rows"]

    def mismatches() -> Iterable[str]:
        for i, row in enumerate(rows):
            for column, fn in TEXT_CLEAN_COLUMNS.items():
                if column in row and (got := fn(row["input"])) != row[column]:
                    yield f"row {i} {column}: {got!r} != {row[column]!r}"

    count = sum(column in row for row in rows for column in TEXT_CLEAN_COLUMNS)
    return _table_check("text_clean", mismatches(), count, "input x column values")


def _preprocess_pixels_check(case_dir: Path) -> Check:
    from PIL import Image

    case = load_case_json(case_dir)
    pixels = load_file(case_dir / "inputs.safetensors")["image_hwc_uint8"]  # [h, w, 3] uint8
    ref = load_file(case_dir / "outputs.safetensors")["image_tensor"]  # [1, 3, H, W]
    image = Image.fromarray(pixels.numpy())  # uint8 [h, w, 3] -> RGB
    return compare(
        "preprocess_pixels.image_tensor", preprocess_image(image, int(case["area"])), ref
    )


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# file or folder in tables/ -> the checks it feeds
TABLES = {
    "resolution.json": lambda p: _resolution_checks(_json(p)),
    "prompt_format.json": lambda p: [_prompt_format_check(_json(p))],
    "text_clean.json": lambda p: [_text_clean_check(_json(p))],
    "preprocess_pixels": lambda p: [_preprocess_pixels_check(p)],
}


def run(case_dir: Path) -> list[Check]:
    case_dir = Path(case_dir)
    checks: list[Check] = []
    for name, checks_for in TABLES.items():
        path = case_dir / name
        if path.exists():
            checks += checks_for(path)
        else:  # the held-out set has the same files: a missing one is a failure, not a skip
            checks.append(exact(name, False, f"missing: {path}"))
    return checks
