"""`sampler/`: the schedules and solver steps of `model.schedulers`, then the denoising loop.

`loop_checks` runs the pipeline's own loop (`model.pipeline.denoise`) on a `RecordingFusion`,
which keeps every model call's inputs and predictions (the loop itself has no trace hook).
`scheduler_checks` covers case.json `schedules` (timesteps exact, same dtype; sigmas within
1e-6) and every `scheduler_unit.<name>.*` case (a fixed sample and sequence of model outputs
stepped through a fresh scheduler, all steps compared at once as one stacked tensor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from model.convert.fusion import load_fusion
from model.loading import read_checkpoint
from model.modules.fusion import FusionModel
from model.pipeline import denoise
from model.sampling import SamplingParams
from model.schedulers import make_scheduler

from . import Check, compare, exact, load_case_json
from .fusion import fusion_config

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


STEP_TENSORS = (
    "video_in",
    "audio_in",
    "pred_video_pos",
    "pred_video_neg",
    "pred_audio_pos",
    "pred_audio_neg",
)


class RecordingFusion(nn.Module):
    """A fusion model that records what `denoise` asks of it, for the per-step references.

    Each call's latent inputs and predictions are kept, in call order. A step of the loop is
    either two plain calls, the positive pass and then the negative one (`forward`), or one
    batched call (`forward_cfg`, `batch_cfg=True`); `steps()` turns the calls into one record
    per step. Any other attribute is the wrapped model's.
    """

    def __init__(self, fusion: FusionModel) -> None:
        super().__init__()
        self.fusion = fusion
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["fusion"], name)

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fusion(video, audio, *args, **kwargs)
        self.calls.append(("forward", video.clone(), audio.clone(), tuple(out)))
        return out

    def forward_cfg(
        self, video: torch.Tensor, audio: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.fusion.forward_cfg(video, audio, *args, **kwargs)
        self.calls.append(("forward_cfg", video.clone(), audio.clone(), tuple(out)))
        return out

    def steps(self) -> list[dict[str, torch.Tensor]]:
        """One record per step: `STEP_TENSORS` -> tensor (batch dim kept)."""
        records, calls = [], list(self.calls)
        while calls:
            kind, video, audio, out = calls.pop(0)
            if kind == "forward_cfg":
                pos_v, pos_a, neg_v, neg_a = out
            else:  # the positive pass, then the negative pass on the same latents
                if not calls or calls[0][0] != "forward":
                    raise ValueError("a denoising step made one plain model call, expected two")
                (pos_v, pos_a), (neg_v, neg_a) = out, calls.pop(0)[3]
            records.append(
                dict(zip(STEP_TENSORS, (video, audio, pos_v, neg_v, pos_a, neg_a), strict=True))
            )
        return records


def sampling_params(params: dict) -> SamplingParams:
    """The loop settings of a sampler case.json `params` dict."""
    return SamplingParams(
        steps=int(params["steps"]),
        solver=params["solver_name"],
        shift=float(params["shift"]),
        video_guidance_scale=float(params["video_guidance_scale"]),
        audio_guidance_scale=float(params["audio_guidance_scale"]),
        slg_layer=int(params["slg_layer"] or 0),  # False / None / 0 / -1: no skipped layer
    )


def run_loop(
    model: FusionModel,
    inputs: dict[str, torch.Tensor],
    params: dict,
    first_frame_is_clean: bool,
    *,
    batch_cfg: bool = False,
) -> dict[str, torch.Tensor]:
    """The pipeline's own loop (`model.pipeline.denoise`) on the case's unbatched inputs:
    `step{i}.<STEP_TENSORS>` and `final_{video,audio}_latent`, batch dim dropped."""
    recorder = RecordingFusion(model)
    video, audio = denoise(
        recorder,
        inputs["video_noise"][None],
        inputs["audio_noise"][None],
        inputs["text_emb_pos"][None],
        inputs["text_emb_video_neg"][None],
        inputs["text_emb_audio_neg"][None],
        sampling_params(params),
        first_frame_latent=inputs["first_frame_latent"][None] if first_frame_is_clean else None,
        batch_cfg=batch_cfg,
    )
    out = {"final_video_latent": video[0], "final_audio_latent": audio[0]}
    for i, step in enumerate(recorder.steps()):
        out |= {f"step{i}.{name}": tensor[0] for name, tensor in step.items()}
    return out


def loop_checks(case_dir: Path) -> list[Check]:
    """The whole sampling loop per mode: every step's model inputs and raw predictions and the
    final latents. The fusion weights and config are the `../fusion` case's (`case.json` names
    them); the text embeddings, noise and first-frame latent are the saved inputs."""
    case = load_case_json(case_dir)
    # "weights" reads "../fusion/weights.safetensors (identical file; ...)": the path comes first.
    weights = (case_dir / case["weights"].split(" ")[0]).resolve()
    config = fusion_config(load_case_json(weights.parent))
    model = load_fusion(read_checkpoint(weights), config, source=str(weights), dtype=torch.float32)
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    refs = load_file(str(case_dir / "outputs.safetensors"))

    produced: dict[str, torch.Tensor] = {}
    for mode, spec in case["modes"].items():
        loop = run_loop(model, inputs, case["params"], bool(spec["first_frame_is_clean"]))
        produced |= {f"{mode}.{name}": tensor for name, tensor in loop.items()}

    loop_refs = {k: v for k, v in refs.items() if not k.startswith("scheduler_unit.")}
    checks = [compare(k, produced[k], ref) for k, ref in loop_refs.items() if k in produced]
    checks += [exact(k, False, "not produced") for k in loop_refs if k not in produced]
    return checks


def run(case_dir: Path) -> list[Check]:
    return scheduler_checks(case_dir) + loop_checks(case_dir)
