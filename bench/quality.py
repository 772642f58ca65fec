"""`python -m bench.quality`: what the approximate modes cost in quality, and what they save.

Per mode, on the tiny_1s preset (random weights, CPU): the DiT forwards of one clip (counted),
the DiT weight memory, and the deviation of the clip from the mode's reference: rel L2 of the
final latents (video, audio), PSNR of the decoded frames, SNR of the waveform. Modes:

- `cache=T`: step caching (`RuntimeOptions.cache_threshold`) against the uncached clip, fp32;
- `int8`, `fp8_row` (`RuntimeOptions.quantize`) and `fp8_tensor` (`fp8.py`'s per-tensor scales,
  run through the CPU's `torch._scaled_mm`) against the same model in bf16, plus the rel L2 of
  one DiT forward; `bf16` itself against fp32 for scale;
- `fast`: the few-step sampling preset (6 steps, guidance 1, shift 6): forwards only (random
  weights have no FastWan LoRA, so its deviation from the 50-step clip means nothing here).

Figures are for a tiny random model on a CPU: they show the method and its relative costs, not
Ovi's real quality (that needs the weights and a GPU). Prints a table and writes `--out` JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import OviConfig
from model.modules.fusion import FusionModel
from model.optimize.fp8 import enable_fp8
from model.optimize.quantize import quantize_blocks, weight_bytes
from model.optimize.step_cache import ForwardCount
from model.pipeline import OviPipeline, denoise
from model.presets import fast_preset
from model.sampling import SamplingParams

PROMPT = "A man says <S>hello there<E> while waving. Audio: male voice, light wind"
THRESHOLDS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 1.0)


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def psnr(frames: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((frames.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def snr(audio: np.ndarray, ref: np.ndarray) -> float:
    noise = float(np.sum((audio.astype(np.float64) - ref) ** 2))
    return (
        math.inf
        if noise == 0
        else 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)
    )


def clip(pipe: OviPipeline, params: SamplingParams, cache_threshold: float | None) -> dict:
    """One t2v clip through the pipeline's own steps, keeping the latents."""
    height, width = pipe.resolve_size(None, params)
    text = pipe.encode_prompt(
        pipe.format_prompt(PROMPT), params.video_negative_prompt, params.audio_negative_prompt
    )
    video, audio = pipe.prepare_latents(params.seed or 0, height, width)
    count = ForwardCount()
    started = time.perf_counter()
    video, audio = denoise(
        pipe.fusion, video, audio, *text, params, cache_threshold=cache_threshold, forwards=count
    )
    seconds = time.perf_counter() - started
    frames, waveform = pipe.decode(video, audio)
    return {
        "video": video, "audio": audio, "frames": frames, "waveform": waveform,
        "forwards": count, "denoise_s": seconds,
    }  # fmt: skip


def deviation(out: dict, ref: dict) -> dict[str, float]:
    return {
        "rel_l2_video_latent": rel_l2(out["video"], ref["video"]),
        "rel_l2_audio_latent": rel_l2(out["audio"], ref["audio"]),
        "video_psnr_db": psnr(out["frames"], ref["frames"]),
        "audio_snr_db": snr(out["waveform"], ref["waveform"]),
    }


def one_forward(pipe: OviPipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive DiT forward on fixed inputs (the first denoising step)."""
    params = pipe.preset.sampling
    height, width = pipe.resolve_size(None, params)
    text = pipe.encode_prompt(pipe.format_prompt(PROMPT), "", "")
    video, audio = pipe.prepare_latents(0, height, width)
    t = torch.tensor([999.0])
    with torch.no_grad():
        return pipe.fusion(video, audio, t, text[0], text[0])


def full_size_bytes(mode: str) -> int:
    """DiT weight bytes at full size (Ovi's 11B fusion model built on the meta device, bf16)."""
    with torch.device("meta"):
        model = FusionModel(OviConfig().fusion).to(torch.bfloat16)
    if mode == "fp8_tensor":
        enable_fp8(model)
    elif mode != "bf16":
        quantize_blocks(model, mode)
    return weight_bytes(model)


def row(mode: str, out: dict, ref: dict | None, weights: int, **extra: Any) -> dict:
    result = {
        "mode": mode,
        "dit_forwards": out["forwards"].run,
        "dit_forwards_skipped": out["forwards"].skipped,
        "dit_weight_bytes": weights,
        "denoise_s": round(out["denoise_s"], 3),
        **(deviation(out, ref) if ref is not None else {}),
        **extra,
    }
    return result


@torch.no_grad()
def run(preset: str, steps: int) -> list[dict]:
    rows: list[dict] = []
    # step caching, fp32, `steps` steps with CFG
    pipe = OviPipeline.from_preset(preset)
    params = pipe.preset.sampling.replace(steps=steps, seed=0)
    ref = clip(pipe, params, None)
    size = weight_bytes(pipe.fusion)
    rows.append(row("fp32 (reference of cache)", ref, None, size))
    for threshold in THRESHOLDS:
        rows.append(row(f"cache={threshold:g}", clip(pipe, params, threshold), ref, size))
    # few-step preset: forwards only
    fast = fast_preset(pipe.preset).sampling.replace(seed=0)
    rows.append(row("fast (6 steps, guidance 1)", clip(pipe, fast, None), None, size))
    fp32_forward = one_forward(pipe)

    # 8-bit: against the same weights in bf16
    bf16 = OviPipeline.from_preset(preset, dtype="bfloat16")
    bf16_ref = clip(bf16, params, None)
    bf16_forward = one_forward(bf16)
    rows.append(
        row(
            "bf16 (reference of 8-bit; vs fp32)",
            bf16_ref,
            ref,
            weight_bytes(bf16.fusion),
            full_size_dit_bytes=full_size_bytes("bf16"),
            forward_rel_l2_video=rel_l2(bf16_forward[0], fp32_forward[0]),
            forward_rel_l2_audio=rel_l2(bf16_forward[1], fp32_forward[1]),
        )  # fmt: skip
    )
    for mode in ("int8", "fp8_row", "fp8_tensor"):
        quant = OviPipeline.from_preset(preset, dtype="bfloat16")
        if mode == "fp8_tensor":
            enable_fp8(quant.fusion)
        else:
            quantize_blocks(quant.fusion, mode)
        forward = one_forward(quant)
        rows.append(
            row(
                mode,
                clip(quant, params, None),
                bf16_ref,
                weight_bytes(quant.fusion),
                full_size_dit_bytes=full_size_bytes(mode),
                forward_rel_l2_video=rel_l2(forward[0], bf16_forward[0]),
                forward_rel_l2_audio=rel_l2(forward[1], bf16_forward[1]),
            )  # fmt: skip
        )
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--preset", default="tiny_1s")
    parser.add_argument("--steps", type=int, default=20, help="steps of the reference clip")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = run(args.preset, args.steps)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(_fmt(r.get(k, "")) for k in keys))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        clean = [
            {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
            for r in rows
        ]
        args.out.write_text(
            json.dumps({"preset": args.preset, "steps": args.steps, "rows": clean}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
