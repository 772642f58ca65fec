"""Synthetic "held-out-like" reference sets: the public case layout with OTHER tiny configs.

The held-out reference set has the public set's folders, file names, tensor names and
conventions but different configs, seeds, input sizes and step counts. This builds such sets so
the conformance runners can be exercised on them (`tests/model/test_heldout_variants.py`):

    python tests/model/heldout_gen.py OUT_DIR [--variant a|b]   # then: ovi conformance OUT_DIR

What a pass proves: most expected outputs are RE-GENERATED with this project's own code (no
official code runs here), so for those a pass only shows robustness: every size, count and
option is read from case.json or from the tensors, nothing hard-coded from the public set breaks
or silently mismatches. A few expected values come from short independent formulas written
here, and those are real checks: the RoPE tables, the umT5 encoder (Wan's formulation, so other
bucket counts and head splits), the MMAudio/BigVGAN load-time weight transforms, the schedules'
timesteps, the i2v size rule and its pixels.

Variant "a": fusion head_dim 48 (3 heads), 2 layers, text_len 8; sampler euler, slg False;
t5 3 prompts, 16 buckets, dim_attn != dim; Wan VAE num_res_blocks 2, attn_scales non-empty,
z_dim 16; MMAudio hidden 24, vocoder upsample_initial_channel 64 with other rates/kernels;
preprocess_pixels at area 4096 (an 11x19 image). Variant "b": head_dim 24, 4 layers, 16/12 latent channels, slg_layer 2, dpm++; t5
4 prompts, 8 buckets; Wan VAE with 3 stages (8x spatial); MMAudio hidden 8; area 2048.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

PUBLIC = Path(__file__).resolve().parents[1] / "fixtures" / "reference"

VARIANTS = {
    "a": dict(
        fusion=dict(
            dim=144, ffn_dim=96, freq_dim=32, num_heads=3, num_layers=2, text_len=8, text_dim=24,
            video_grid=(2, 6, 4), audio_len=7, contexts=(3, 8), t=613, slg=1,
        ),
        sampler=dict(
            solver="euler", steps=4, shift=3.0, video_guidance_scale=5.0,
            audio_guidance_scale=2.5, slg_layer=False,
            schedules=[("euler", 7, 3.0), ("unipc", 3, 2.0), ("dpm++", 4, 7.0)],
            units=[("euler", 5, 3.0), ("dpm++", 4, 3.0), ("unipc", 3, 3.0)],
            unit_shape=(1, 3, 2, 5),
        ),
        t5=dict(
            vocab=97, dim=24, dim_attn=16, dim_ffn=40, num_heads=2, num_layers=3,
            num_buckets=16, lengths=(5, 13, 1), seq=13,
        ),
        wan_vae=dict(
            dim=4, dec_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
            attn_scales=[0.5, 0.25], temperal_downsample=[False, True, True],
            frames=9, height=32, width=16,
        ),
        mmaudio=dict(
            hidden_dim=24, upsample_initial_channel=64, upsample_rates=[8, 4, 4, 2],
            upsample_kernel_sizes=[16, 8, 8, 4], resblock_kernel_sizes=[3, 7],
            resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], latent_len=5, encode_len=10,
        ),
        pixels=dict(area=4096, image_wh=(11, 19)),
    ),
    "b": dict(
        fusion=dict(
            dim=48, ffn_dim=64, freq_dim=64, num_heads=2, num_layers=4, text_len=20,
            text_dim=16, video_grid=(3, 2, 2), audio_len=12, contexts=(20, 1), t=37, slg=2,
            channels=(16, 12),
        ),
        sampler=dict(
            solver="dpm++", steps=3, shift=7.0, video_guidance_scale=2.0,
            audio_guidance_scale=6.0, slg_layer=2,
            schedules=[("dpm++", 3, 7.0), ("unipc", 9, 1.0), ("euler", 2, 5.0)],
            units=[("unipc", 2, 7.0), ("dpm++", 7, 1.5)],
            unit_shape=(1, 2, 2),
        ),
        t5=dict(
            vocab=50, dim=16, dim_attn=16, dim_ffn=24, num_heads=4, num_layers=1,
            num_buckets=8, lengths=(2, 9, 9, 4), seq=9,
        ),
        wan_vae=dict(
            dim=6, dec_dim=6, z_dim=48, dim_mult=[1, 2, 2], num_res_blocks=1,
            attn_scales=[], temperal_downsample=[True, False],
            frames=5, height=16, width=24,
        ),
        mmaudio=dict(
            hidden_dim=8, upsample_initial_channel=192, upsample_rates=[4, 4, 2, 2, 2, 2],
            upsample_kernel_sizes=[8, 8, 4, 4, 4, 4], resblock_kernel_sizes=[3, 7, 11],
            resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], latent_len=3,
            encode_len=6,
        ),
        pixels=dict(area=2048, image_wh=(8, 82)),
    ),
}  # fmt: skip


# -- writing ---------------------------------------------------------------------------------


def _save(case_dir: Path, case: dict, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write one safetensors file and record its sha256, shapes and dtypes in `case`."""
    path = case_dir / name
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path))
    case.setdefault("files", {})[name] = {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in tensors.items()
        },
    }


def _write_case(case_dir: Path, case: dict) -> None:
    (case_dir / "case.json").write_text(json.dumps(case, indent=1))


def _case(name: str, expected: str = "this project's code", **fields: object) -> dict:
    """A case.json header: the case name, what the expected outputs come from, then `fields`."""
    return {
        "case": name,
        "set": f"synthetic held-out-like (expected outputs from {expected})",
    } | fields


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- fusion + sampler ------------------------------------------------------------------------


def _tower_configs(p: dict) -> tuple[dict, dict]:
    public = json.loads((PUBLIC / "fusion" / "case.json").read_text())
    sizes = {k: p[k] for k in ("dim", "ffn_dim", "freq_dim", "num_heads", "num_layers")}
    sizes |= {"text_len": p["text_len"], "text_dim": p["text_dim"]}
    video_ch, audio_ch = p.get("channels", (48, 20))  # latent channels (in_dim = out_dim)
    return (
        public["video_config"] | sizes | {"in_dim": video_ch, "out_dim": video_ch},
        public["audio_config"] | sizes | {"in_dim": audio_ch, "out_dim": audio_ch},
    )


def rope_params(length: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Wan's `rope_params`: [length, dim/2] angles, 1/10000^(2k/dim) per pair, times `scale`."""
    freqs = scale / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(torch.arange(length, dtype=torch.float64), freqs)


def rope_tables(head_dim: int, audio_scale: float, length: int = 1024) -> dict[str, torch.Tensor]:
    """The official tables as (cos, sin): video cat(d - 4(d//6), 2(d//6), 2(d//6)) dims, audio
    d - 4(d//6) dims with the temporal scaling (written from the official construction)."""
    d = head_dim
    video = torch.cat(
        [rope_params(length, d - 4 * (d // 6)), *[rope_params(length, 2 * (d // 6))] * 2], dim=1
    )
    audio = rope_params(length, d - 4 * (d // 6), audio_scale)
    return {
        f"rope.{name}_freqs": torch.stack([angles.cos(), angles.sin()], dim=-1)
        for name, angles in (("video", video), ("audio", audio))
    }


def build_fusion(root: Path, p: dict, seed: int) -> None:
    from model.convert.fusion import load_fusion, random_fusion_state
    from tools.conformance.fusion import fusion_config, run_variant

    case_dir = root / "fusion"
    case_dir.mkdir(parents=True)
    video_config, audio_config = _tower_configs(p)
    config = fusion_config({"video_config": video_config, "audio_config": audio_config})
    state = random_fusion_state(config, seed=seed)
    model = load_fusion(state, config, source="heldout", dtype=torch.float32)
    # time MLPs per token (the official form): a different code path from the runner's
    model.time_per_token = True

    g = _gen(seed + 1)
    f, h, w = p["video_grid"]
    cv, ca = video_config["in_dim"], audio_config["in_dim"]
    inputs = {
        "video_latent": torch.randn(cv, f, 2 * h, 2 * w, generator=g),
        "audio_latent": torch.randn(p["audio_len"], ca, generator=g),
        "vid_context": torch.randn(p["contexts"][0], p["text_dim"], generator=g),
        "audio_context": torch.randn(p["contexts"][1], p["text_dim"], generator=g),
        "t": torch.tensor([p["t"]], dtype=torch.int64),
    }
    variants = {
        "t2v": {"first_frame_is_clean": False, "slg_layer": False},
        "i2v": {"first_frame_is_clean": True, "slg_layer": False},
        "t2v_slg": {"first_frame_is_clean": False, "slg_layer": p["slg"]},
        "i2v_slg": {"first_frame_is_clean": True, "slg_layer": p["slg"]},
    }
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, args in variants.items():  # taps: t2v and i2v only, as the public set
            out = run_variant(model, inputs, args, taps=not args["slg_layer"])
            outputs |= {f"{name}.{k}": v for k, v in out.items()}
    outputs |= rope_tables(config.video.head_dim, audio_config["temporal_rope_scaling_factor"])

    lv, la = f * h * w, p["audio_len"]
    case = _case(
        "fusion",
        video_config=video_config,
        audio_config=audio_config,
        seeds={"weights": seed, "inputs": seed + 1},
        call={"vid_seq_len": lv, "audio_seq_len": la},
        variants=variants,
        grid_info={
            "video_grid_sizes": [[f, h, w]],
            "video_seq_lens": [lv],
            "audio_grid_sizes": [[la]],
            "audio_seq_lens": [la],
        },
    )
    _save(case_dir, case, "weights.safetensors", state)
    _save(case_dir, case, "inputs.safetensors", inputs)
    _save(case_dir, case, "outputs.safetensors", outputs)
    _write_case(case_dir, case)


def _ovi_timesteps(solver: str, steps: int, shift: float) -> list:
    """The official timesteps, written from the README's description of each schedule."""

    def shifted(s: np.ndarray) -> np.ndarray:
        return shift * s / (1 + (shift - 1) * s)

    if solver == "unipc":
        s = np.linspace(np.float32(0.999), 0, steps + 1)[:-1]
        return (shifted(s) * 1000).astype(np.int64).tolist()
    if solver == "dpm++":
        return (shifted(np.linspace(1, 0, steps + 1)[:steps]) * 1000).astype(np.int64).tolist()
    return None  # euler: diffusers' own float schedule, taken from the scheduler itself


def build_sampler(root: Path, p: dict, seed: int) -> None:
    from model.convert.fusion import load_fusion
    from model.loading import read_checkpoint
    from model.schedulers import make_scheduler
    from tools.conformance.fusion import fusion_config
    from tools.conformance.sampler import run_loop

    case_dir = root / "sampler"
    case_dir.mkdir(parents=True)
    fusion_case = json.loads((root / "fusion" / "case.json").read_text())
    config = fusion_config(fusion_case)
    weights = root / "fusion" / "weights.safetensors"
    model = load_fusion(read_checkpoint(weights), config, source="heldout", dtype=torch.float32)
    vid_len = config.video.text_len

    g = _gen(seed)
    grid = fusion_case["grid_info"]["video_grid_sizes"][0]
    f, h, w = grid[0] + 1, 2 * grid[1], 2 * grid[2]  # another frame count than the fusion case
    la = fusion_case["grid_info"]["audio_seq_lens"][0] + 3
    td = config.video.text_dim
    cv, ca = config.video.in_dim, config.audio.in_dim
    inputs = {
        "video_noise": torch.randn(cv, f, h, w, generator=g),
        "audio_noise": torch.randn(la, ca, generator=g),
        "text_emb_pos": torch.randn(min(6, vid_len), td, generator=g),
        "text_emb_video_neg": torch.randn(min(3, vid_len), td, generator=g),
        "text_emb_audio_neg": torch.randn(vid_len, td, generator=g),
        "first_frame_latent": torch.randn(cv, 1, h, w, generator=g),
    }
    params = {
        k: p[k]
        for k in ("steps", "shift", "video_guidance_scale", "audio_guidance_scale", "slg_layer")
    }
    params |= {"solver_name": p["solver"], "seed": seed}
    modes = {}
    outputs: dict[str, torch.Tensor] = {}
    for mode, clean in (("i2v", True), ("t2v", False)):
        with torch.no_grad():  # both passes in one batch: another path than the runner's
            loop = run_loop(model, inputs, params, clean, batch_cfg=True)
        outputs |= {f"{mode}.{name}": tensor for name, tensor in loop.items()}
        timesteps = make_scheduler(p["solver"], p["steps"], p["shift"]).timesteps
        modes[mode] = {
            "timesteps": timesteps.tolist(),
            "timestep_input_dtype": str(timesteps.dtype),
            "first_frame_is_clean": clean,
        }

    schedules = {}
    for solver, steps, shift in p["schedules"]:
        scheduler = make_scheduler(solver, steps, shift)
        official = _ovi_timesteps(solver, steps, shift)
        timesteps = scheduler.timesteps.tolist() if official is None else official
        schedules[f"{solver}_steps{steps}_shift{shift}"] = {
            "solver": solver,
            "steps": steps,
            "shift": shift,
            "timesteps": timesteps,
            "timesteps_dtype": str(scheduler.timesteps.dtype),
            "sigmas": scheduler.sigmas.tolist(),
            "sigmas_dtype": str(scheduler.sigmas.dtype),
        }
    units = {}
    for solver, steps, shift in p["units"]:
        name = f"{solver}_steps{steps}"
        scheduler = make_scheduler(solver, steps, shift)
        sample = torch.randn(p["unit_shape"], generator=g)
        model_outputs = torch.randn(steps, *p["unit_shape"], generator=g)
        outputs[f"scheduler_unit.{name}.sample_init"] = sample
        outputs[f"scheduler_unit.{name}.model_outputs"] = model_outputs
        after = []
        for t, out in zip(scheduler.timesteps, model_outputs, strict=True):
            sample = scheduler.step(out, t, sample)
            after.append(sample)
        outputs[f"scheduler_unit.{name}.samples_after_step"] = torch.stack(after)
        units[name] = {
            "solver": solver,
            "steps": steps,
            "shift": shift,
            "sample_shape": list(p["unit_shape"]),
            "timesteps": scheduler.timesteps.tolist(),
        }

    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    case = _case(
        "sampler",
        weights="../fusion/weights.safetensors (identical file; sha256 recorded)",
        weights_sha256=sha,
        fusion_config_ref="../fusion/case.json",
        params=params,
        latent_sizes={"video": [cv, f, h, w], "audio": [la, ca]},
        vid_seq_len=f * h * w // 4,
        audio_seq_len=la,
        modes=modes,
        schedules=schedules,
        scheduler_unit_tests=units,
    )
    _save(case_dir, case, "inputs.safetensors", inputs)
    _save(case_dir, case, "outputs.safetensors", outputs)
    _write_case(case_dir, case)


# -- t5 --------------------------------------------------------------------------------------


def wan_t5_reference(
    state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, mask: torch.Tensor,
    max_dist: int = 128, eps: float = 1e-6,
) -> torch.Tensor:  # fmt: skip
    """Wan's umT5 encoder written from the README (float64): per-layer bidirectional bias."""
    heads, buckets = cfg["num_heads"], cfg["num_buckets"]
    w = {k: v.double() for k, v in state.items()}

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    n = ids.shape[1]
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    half = buckets // 2
    bucket = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = (
        exact
        + (torch.log(rel.double() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    )
    bucket = bucket + torch.where(rel < exact, rel, large.clamp(max=half - 1))

    x = w["token_embedding.weight"][ids]  # [B, L, dim]
    b = ids.shape[0]
    keep = mask[:, None, None, :].bool()  # [B, 1, 1, Lk]
    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}."
        h = rms(x, w[p + "norm1.weight"])
        q, k, v = (
            (h @ w[p + f"attn.{n_}.weight"].T).view(b, -1, heads, cfg["dim_attn"] // heads)
            for n_ in "qkv"
        )
        bias = w[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k)  # no 1/sqrt(d)
        logits = logits + torch.where(keep, bias, torch.finfo(torch.float64).min)
        att = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v).flatten(2)
        x = x + att @ w[p + "attn.o.weight"].T
        h = rms(x, w[p + "norm2.weight"])
        gate = F.gelu(h @ w[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ w[p + "ffn.fc1.weight"].T) * gate) @ w[p + "ffn.fc2.weight"].T
    return rms(x, w["norm.weight"]).float()


def build_t5(root: Path, p: dict, seed: int) -> None:
    from model.config import T5Config
    from model.convert.umt5 import random_t5_state

    case_dir = root / "t5"
    case_dir.mkdir(parents=True)
    cfg = {k: p[k] for k in ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers")}
    cfg |= {"num_buckets": p["num_buckets"], "shared_pos": False}
    state = random_t5_state(T5Config.from_official(cfg), seed)
    g = _gen(seed + 1)
    ids = torch.zeros(len(p["lengths"]), p["seq"], dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(p["lengths"]):
        ids[row, : n - 1] = torch.randint(3, p["vocab"], (n - 1,), generator=g)
        ids[row, n - 1] = 1  # eos
        mask[row, :n] = 1
    hidden = wan_t5_reference(state, cfg, ids, mask)
    outputs = {"hidden_states": hidden}
    outputs |= {f"context_{b}": hidden[b, :n] for b, n in enumerate(p["lengths"])}
    case = _case(
        "t5",
        expected="a float64 formula written here",
        config=cfg,
        relative_attention_max_distance=128,
        seeds={"weights": seed, "inputs": seed + 1},
        lengths=list(p["lengths"]),
    )
    _save(case_dir, case, "weights.safetensors", state)
    _save(case_dir, case, "inputs.safetensors", {"ids": ids, "mask": mask})
    _save(case_dir, case, "outputs.safetensors", outputs)
    _write_case(case_dir, case)


# -- wan_vae ---------------------------------------------------------------------------------


def build_wan_vae(root: Path, p: dict, seed: int) -> None:
    from model.config import WanVAEConfig
    from model.convert.wan_vae import load_wan_vae, random_wan_vae_state

    case_dir = root / "wan_vae"
    case_dir.mkdir(parents=True)
    cfg = {k: p[k] for k in ("dim", "dec_dim", "z_dim", "dim_mult", "num_res_blocks")}
    cfg |= {
        "attn_scales": p["attn_scales"],
        "temperal_downsample": p["temperal_downsample"],
        "dropout": 0.0,
    }
    g = _gen(seed + 1)
    z = p["z_dim"]
    mean, std = 0.2 * torch.randn(z, generator=g), 0.4 + torch.rand(z, generator=g)
    config = WanVAEConfig.from_official(
        cfg, latents_mean=tuple(mean.tolist()), latents_std=tuple(std.tolist())
    )
    state = random_wan_vae_state(config, seed)
    vae = load_wan_vae(state, config, source="heldout")
    t, hh, ww = p["frames"], p["height"], p["width"]
    s, tc = config.spatial_compression, config.temporal_compression
    video = torch.rand(1, 3, t, hh, ww, generator=g) * 2 - 1
    image = torch.rand(1, 3, 1, hh, ww, generator=g) * 2 - 1
    latent = torch.randn(1, z, 1 + (t - 1) // tc, hh // s, ww // s, generator=g)
    inputs = {"video": video, "image": image, "latent": latent}
    inputs |= {"latents_mean": mean, "latents_std": std}
    with torch.no_grad():
        outputs = {
            "encode_video_latent": vae.encode(video),
            "encode_image_latent": vae.encode_image(image),
            "decode_video_raw": vae.decode(latent, clamp=False),
            "decode_video_clamped": vae.decode(latent, clamp=True),
            "encode_video_mu_unnormalized": vae.encode(video, normalize=False),
        }
    case = _case(
        "wan_vae",
        config=cfg,
        seeds={"weights": seed, "inputs": seed + 1},
        shapes={k: list(v.shape) for k, v in inputs.items() if v.ndim == 5},
    )
    _save(case_dir, case, "weights.safetensors", state)
    _save(case_dir, case, "inputs.safetensors", inputs)
    _save(case_dir, case, "outputs.safetensors", outputs)
    _write_case(case_dir, case)


# -- mmaudio ---------------------------------------------------------------------------------


def effective_vae_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MMAudio's load-time normalisation, written from the README: every conv weight
    W [out, in, k] -> W / (||W_o|| + 1e-4 sqrt(in k)); everything else as stored."""
    out = {}
    for key, value in state.items():
        if value.ndim == 3 and key.endswith(".weight") and not key.startswith("data_"):
            norm = value.flatten(1).norm(dim=1).view(-1, 1, 1)
            value = value / (norm + 1e-4 * math.sqrt(value[0].numel()))
        out[key] = value
    return out


def effective_vocoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BigVGAN weight-norm removal: <conv>.weight = g * v / ||v|| (norm over all dims but 0)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            conv = key.removesuffix(".weight_g")
            v = state[f"{conv}.weight_v"]
            out[f"{conv}.weight"] = value * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
        else:
            out[key] = value
    return out


def build_mmaudio(root: Path, p: dict, seed: int) -> None:
    from model.config import AudioVAEConfig, VocoderConfig
    from model.convert.mmaudio import (
        load_audio_vae,
        load_vocoder,
        random_audio_vae_state,
        random_vocoder_state,
    )

    case_dir = root / "mmaudio"
    case_dir.mkdir(parents=True)
    public = json.loads((PUBLIC / "mmaudio" / "case.json").read_text())
    vae_cfg = public["vae_config"] | {"hidden_dim": p["hidden_dim"]}
    voc_cfg = public["vocoder_config"] | {
        k: p[k]
        for k in (
            "upsample_initial_channel", "upsample_rates", "upsample_kernel_sizes",
            "resblock_kernel_sizes", "resblock_dilation_sizes",
        )
    }  # fmt: skip
    vae_config, voc_config = (
        AudioVAEConfig.from_official(vae_cfg),
        VocoderConfig.from_official(voc_cfg),
    )
    vae_state = random_audio_vae_state(vae_config, seed)
    voc_state = random_vocoder_state(voc_config, seed + 1)
    vae = load_audio_vae(vae_state, vae_config, source="heldout")
    vocoder = load_vocoder(voc_state, voc_config, source="heldout")

    g = _gen(seed + 2)
    latent = torch.randn(1, vae_cfg["embed_dim"], p["latent_len"], generator=g)
    mel_for_encode = -2.0 + 0.5 * torch.randn(1, vae_cfg["data_dim"], p["encode_len"], generator=g)
    with torch.no_grad():
        mel_normalized = vae.decode_normalized(latent)
        mel = vae.denormalize(mel_normalized)
        pre = vocoder.forward_pre_tanh(mel)
        mean, logvar = vae.encode(mel_for_encode)
    inputs = {"latent": latent, "mel_for_encode": mel_for_encode, "vocoder_mel_input": mel}
    outputs = {
        "mel_normalized": mel_normalized,
        "mel": mel,
        "waveform_pre_tanh": pre,
        "waveform": torch.tanh(pre),
        "encode_mean": mean,
        "encode_logvar_clamped": logvar,
    }
    case = _case(
        "mmaudio",
        vae_config=vae_cfg,
        vocoder_config=voc_cfg,
        seeds={"weights": seed, "inputs": seed + 2},
    )
    _save(case_dir, case, "weights.safetensors", vae_state)
    _save(case_dir, case, "weights_vocoder.safetensors", voc_state)
    _save(case_dir, case, "effective_weights_vae.safetensors", effective_vae_weights(vae_state))
    _save(
        case_dir, case, "effective_weights_vocoder.safetensors",
        effective_vocoder_weights(voc_state),
    )  # fmt: skip
    _save(case_dir, case, "inputs.safetensors", inputs)
    _save(case_dir, case, "outputs.safetensors", outputs)
    _write_case(case_dir, case)


# -- tables ----------------------------------------------------------------------------------


def official_i2v_size(w: int, h: int, area: int, m: int = 32) -> tuple[int, int]:
    """The official i2v size rule, restated: seven heights around the aspect-derived one (each
    with its aspect-matched width) and the independently rounded scaled size; least area error,
    then least |W/H - w/h|, then the earliest."""
    r = w / h
    base = max(1, round(math.sqrt(max(1, area // (m * m)) / r)))
    sizes = [(max(1, base + d), max(1, round(max(1, base + d) * r))) for d in range(-3, 4)]
    cands = [(a * m, b * m) for a, b in sizes]
    k = math.sqrt(area / (h * w))
    cands.append((max(m, round(h * k / m) * m), max(m, round(w * k / m) * m)))
    return min(cands, key=lambda c: (abs(c[0] * c[1] - area), abs(c[1] / c[0] - r)))


def build_tables(root: Path, p: dict, seed: int) -> None:
    case_dir = root / "tables"
    shutil.copytree(PUBLIC / "tables", case_dir, ignore=shutil.ignore_patterns("preprocess_pixels"))
    # extra i2v rows: odd aspects, tiny images, small areas
    table = json.loads((case_dir / "resolution.json").read_text())
    g = np.random.default_rng(seed)
    sizes = [(3720, 895), (1723, 166), (5, 2507), (33, 31), (1, 1), (61, 23), (9, 40)]
    sizes += [tuple(int(v) for v in g.integers(1, 3000, 2)) for _ in range(40)]
    areas = [p["pixels"]["area"], 3072, 1024, 12345, 518400]
    for w, h in sizes:
        targets = {}
        for area in areas:
            hh, ww = official_i2v_size(w, h, area)
            targets[str(area)] = {"H": hh, "W": ww, "resized": (hh, ww) != (h, w)}
        table["i2v"].append({"image_w": w, "image_h": h, "targets": targets})
    (case_dir / "resolution.json").write_text(json.dumps(table))

    pix_dir = case_dir / "preprocess_pixels"
    pix_dir.mkdir()
    area, (w, h) = p["pixels"]["area"], p["pixels"]["image_wh"]
    image = torch.from_numpy(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
    hh, ww = official_i2v_size(w, h, area)
    x = image.permute(2, 0, 1)[None].double() / 255.0 * 2 - 1
    out = F.interpolate(x, size=(hh, ww), mode="bicubic", align_corners=False).float()
    case = {"case": "tables/preprocess_pixels", "seed": seed, "area": area, "image_wh": [w, h]}
    _save(pix_dir, case, "inputs.safetensors", {"image_hwc_uint8": image})
    _save(pix_dir, case, "outputs.safetensors", {"image_tensor": out})
    _write_case(pix_dir, case)


# -- all -------------------------------------------------------------------------------------


def build(root: Path | str, variant: str = "a", cases: tuple[str, ...] | None = None) -> Path:
    """Write a held-out-like set for `variant` under `root` (created; must not exist)."""
    root = Path(root)
    root.mkdir(parents=True)
    p = VARIANTS[variant]
    seed = 1000 + 100 * ord(variant)
    builders = {
        "fusion": lambda: build_fusion(root, p["fusion"], seed),
        "sampler": lambda: build_sampler(root, p["sampler"], seed + 10),
        "t5": lambda: build_t5(root, p["t5"], seed + 20),
        "wan_vae": lambda: build_wan_vae(root, p["wan_vae"], seed + 30),
        "mmaudio": lambda: build_mmaudio(root, p["mmaudio"], seed + 40),
        "tables": lambda: build_tables(root, p, seed + 50),
    }
    wanted = cases or tuple(builders)
    if "sampler" in wanted and "fusion" not in wanted:
        wanted = ("fusion", *wanted)  # the sampler case uses ../fusion/weights.safetensors
    with torch.no_grad():
        for name in builders:
            if name in wanted:
                builders[name]()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="a")
    args = parser.parse_args()
    print(build(args.out, args.variant))


if __name__ == "__main__":
    main()
