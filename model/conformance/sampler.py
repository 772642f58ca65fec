"""`sampler/`: the schedules and solver steps of `model.schedulers`, then the denoising loop.

`scheduler_checks` covers case.json `schedules` (timesteps exact, same dtype; sigmas within
1e-6) and every `scheduler_unit.<name>.*` case (a fixed sample and sequence of model outputs
stepped through a fresh scheduler, all steps compared at once as one stacked tensor).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..schedulers import make_scheduler
from . import Check, compare, exact, load_case_json

SIGMA_ATOL = 1e-6


def _schedule_check(name: str, spec: dict) -> Check:
    """One case.json `schedules` entry: timesteps equal (values and dtype), sigmas to 1e-6."""
    scheduler = make_scheduler(spec["solver"], int(spec["steps"]), float(spec["shift"]))
    timesteps, sigmas = scheduler.timesteps, scheduler.sigmas
    problems = []
    if "timesteps_dtype" in spec and str(timesteps.dtype) != spec["timesteps_dtype"]:
        problems.append(f"timesteps dtype {timesteps.dtype} != {spec['timesteps_dtype']}")
    ref_t = torch.tensor(spec["timesteps"], dtype=timesteps.dtype)
    if timesteps.shape != ref_t.shape:
        problems.append(f"{len(timesteps)} timesteps != {len(ref_t)}")
    elif not torch.equal(timesteps.cpu(), ref_t):
        i = int((timesteps.cpu() != ref_t).nonzero()[0, 0])
        problems.append(f"timestep[{i}] {timesteps[i].item()} != {ref_t[i].item()}")
    ref_s = torch.tensor(spec["sigmas"], dtype=torch.float64)
    if sigmas.shape != ref_s.shape:
        problems.append(f"{len(sigmas)} sigmas != {len(ref_s)}")
    else:
        err = (sigmas.cpu().double() - ref_s).abs().max().item()
        if not err <= SIGMA_ATOL:
            problems.append(f"sigmas max abs err {err:.2e} > {SIGMA_ATOL:.0e}")
    detail = "; ".join(problems) if problems else f"{len(timesteps)} steps"
    return exact(f"schedule.{name}", not problems, detail)


def _unit_checks(name: str, spec: dict, tensors: dict[str, torch.Tensor]) -> list[Check]:
    """One `scheduler_unit.<name>` case: its timesteps (exact) and every step's output."""
    prefix = f"scheduler_unit.{name}"
    sample = tensors[f"{prefix}.sample_init"]  # [1, ...]
    model_outputs = tensors[f"{prefix}.model_outputs"]  # [N, 1, ...]
    ref = tensors[f"{prefix}.samples_after_step"]  # [N, 1, ...]
    scheduler = make_scheduler(spec["solver"], int(spec["steps"]), float(spec["shift"]))
    checks = []
    if "timesteps" in spec:
        ours = scheduler.timesteps.tolist()
        checks.append(exact(f"{prefix}.timesteps", ours == spec["timesteps"], f"{len(ours)} steps"))
    if len(scheduler.timesteps) != len(model_outputs):
        detail = f"{len(scheduler.timesteps)} timesteps for {len(model_outputs)} model outputs"
        return [*checks, exact(f"{prefix}.samples_after_step", False, detail)]
    samples = []
    for t, model_output in zip(scheduler.timesteps, model_outputs, strict=True):
        sample = scheduler.step(model_output, t, sample)
        samples.append(sample)
    checks.append(compare(f"{prefix}.samples_after_step", torch.stack(samples), ref))
    return checks


def scheduler_checks(case_dir: Path) -> list[Check]:
    case_dir = Path(case_dir)
    case = load_case_json(case_dir)
    checks = [_schedule_check(name, spec) for name, spec in case.get("schedules", {}).items()]
    units = case.get("scheduler_unit_tests", {})
    if units:
        tensors = load_file(case_dir / "outputs.safetensors")
        for name, spec in units.items():
            checks += _unit_checks(name, spec, tensors)
    if not checks:
        checks.append(exact("schedules", False, "case.json has no schedules or scheduler tests"))
    return checks


def loop_checks(case_dir: Path) -> list[Check]:
    """The whole sampling loop (`model.pipeline.denoise`, the pipeline's own loop) per mode.

    The fusion weights and config are the `../fusion` case's (`case.json` names them); the
    text embeddings, noise and first-frame latent are the saved inputs. Compares every step's
    model inputs and raw predictions and the final latents.
    """
    from ..config import FusionConfig, TowerConfig
    from ..convert.fusion import load_fusion
    from ..loading import read_checkpoint
    from ..pipeline import DenoiseTrace, denoise

    case = load_case_json(case_dir)
    # "weights" reads "../fusion/weights.safetensors (identical file; ...)": the path comes first.
    weights = (case_dir / case["weights"].split(" ")[0]).resolve()
    fusion_case = load_case_json(weights.parent)
    config = FusionConfig(
        video=TowerConfig.from_official(fusion_case["video_config"]),
        audio=TowerConfig.from_official(fusion_case["audio_config"]),
    )
    model = load_fusion(read_checkpoint(weights), config, source=str(weights), dtype=torch.float32)
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    refs = load_file(str(case_dir / "outputs.safetensors"))
    params = case["params"]

    produced: dict[str, torch.Tensor] = {}
    for mode, spec in case["modes"].items():

        def record(step: DenoiseTrace, mode: str = mode) -> None:
            for name in (
                "video_in",
                "audio_in",
                "pred_video_pos",
                "pred_video_neg",
                "pred_audio_pos",
                "pred_audio_neg",
            ):
                produced[f"{mode}.step{step.step}.{name}"] = getattr(step, name)[0]

        video, audio = denoise(
            model,
            inputs["video_noise"][None],
            inputs["audio_noise"][None],
            inputs["text_emb_pos"][None],
            inputs["text_emb_video_neg"][None],
            inputs["text_emb_audio_neg"][None],
            steps=int(params["steps"]),
            solver=params["solver_name"],
            shift=float(params["shift"]),
            video_guidance_scale=float(params["video_guidance_scale"]),
            audio_guidance_scale=float(params["audio_guidance_scale"]),
            slg_layer=params["slg_layer"],
            first_frame_latent=inputs["first_frame_latent"][None]
            if spec["first_frame_is_clean"]
            else None,
            trace=record,
        )
        produced[f"{mode}.final_video_latent"] = video[0]
        produced[f"{mode}.final_audio_latent"] = audio[0]

    loop_refs = {k: v for k, v in refs.items() if not k.startswith("scheduler_unit.")}
    checks = [compare(k, produced[k], ref) for k, ref in loop_refs.items() if k in produced]
    checks += [exact(k, False, "not produced") for k in loop_refs if k not in produced]
    return checks


def run(case_dir: Path) -> list[Check]:
    return scheduler_checks(case_dir) + loop_checks(case_dir)
