"""wan_vae/ case: the Wan2.2 VAE through `load_wan_vae` and `VideoVAE`.

Compares the normalised posterior mean of a video and of a single frame, the raw mu, and the
decode of a normalised latent both unclamped and clamped to [-1, 1]. The 48 latent statistics are
read from the case's inputs (they equal the `WanVAEConfig` constants).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from model.config import WanVAEConfig
from model.convert.wan_vae import load_wan_vae
from model.loading import read_checkpoint

from . import Check, compare, exact, load_case_json


def run(case_dir: Path) -> list[Check]:
    case = load_case_json(case_dir)
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    refs = load_file(str(case_dir / "outputs.safetensors"))
    config = WanVAEConfig.from_official(
        case["config"],
        latents_mean=tuple(inputs["latents_mean"].tolist()),
        latents_std=tuple(inputs["latents_std"].tolist()),
    )
    weights = case_dir / "weights.safetensors"
    vae = load_wan_vae(read_checkpoint(weights), config, source=str(weights))

    runs = {
        "encode_video_latent": lambda: vae.encode(inputs["video"]),
        "encode_image_latent": lambda: vae.encode_image(inputs["image"]),
        "encode_video_mu_unnormalized": lambda: vae.encode(inputs["video"], normalize=False),
        "decode_video_raw": lambda: vae.decode(inputs["latent"], clamp=False),
        "decode_video_clamped": lambda: vae.decode(inputs["latent"], clamp=True),
    }
    checks = []
    for name, ref in refs.items():
        if name in runs:
            checks.append(compare(name, runs[name](), ref))
        else:
            checks.append(exact(name, False, "no runner for this output"))
    return checks
