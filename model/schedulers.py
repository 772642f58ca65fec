"""Flow-matching samplers with Ovi's exact schedules, built from diffusers schedulers.

`make_scheduler(solver, steps, shift)` returns a fresh `FlowScheduler`: `.timesteps` (what the
model is called with), `.sigmas` (N + 1 values ending in 0) and `.step(model_output, timestep,
sample) -> prev_sample`, a plain tensor. A scheduler is stateful (multistep history, step
index): build one per latent stream and per generation (Ovi uses one for video, one for audio).

How each solver is built (diffusers 0.42.1), with an unshifted grid s and its shifted values
s' = shift(s) = shift * s / (1 + (shift - 1) * s):

| solver | diffusers class (config)            | schedule                                   | timesteps     |
| ------ | ----------------------------------- | ------------------------------------------ | ------------- |
| unipc  | UniPCMultistepScheduler (flow_pred, | set_timesteps(sigmas=linspace(f32(0.999),  | int64(s'*1000)|
|        | use_flow_sigmas, flow_shift=shift,  | 0, N+1)[:N]); diffusers shifts it once     | truncated     |
|        | order 2, bh2, lower_order_final)    |                                            |               |
| dpm++  | DPMSolverMultistepScheduler         | shift(linspace(1, 0, N+1)[:N]) written     | int64(s'*1000)|
|        | (dpmsolver++, order 2, midpoint,    | over the set_timesteps(N) grid (the class  | truncated     |
|        | flow_pred, use_flow_sigmas, shift 1)| has no `sigmas=` argument)                 |               |
| euler  | FlowMatchEulerDiscreteScheduler     | plain set_timesteps(N): linspace over the  | float32       |
|        | (shift=shift)                       | shifted training range, shifted again      | (.., 24.41)   |

Euler in full: u = linspace(shift(1), shift(1/1000), N), sigmas = shift(u), timesteps = 1000 *
sigmas: the shift is applied twice (30 steps at shift 5 end on t = 24.41); Ovi uses it this way.
All three end on sigma 0 (`final_sigmas_type="zero"` where the class has the option). Measured
against the official schedulers (`tests/fixtures/reference/sampler`): timesteps and sigmas are
identical; stepping agrees to float32 rounding (max abs 7e-7 for unipc 6 steps and dpm++ 30
steps, 2.9e-6 for unipc 50 steps; euler bit-identical).

Host syncs. `make_scheduler` sets the step index once (`set_begin_index(0)`), so no step looks
its timestep up by value (diffusers' `index_for_timestep`: a `nonzero` and an `.item()` on the
first step). The UniPC step copies 0-dim CPU sigmas to the sample's device with blocking copies
(5-6 per step); `FlowScheduler.step` moves the sigma table to the sample's device once, on the
first step, so those copies become no-ops with the same float32 values. What still syncs: the
order-2 corrector's `torch.linalg.solve(R, b)` (its error check reads the device), once per step
from the third step on; dpm++ and euler do their scalar math on CPU sigmas and copy nothing.

Index 0 is where diffusers' lookup starts too, except where the int64 timesteps repeat at the
top (unipc, shift 5, 251+ steps): there the lookup took index 1 and the last step failed an
assertion; with index 0 those runs complete.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .sampling import SOLVERS

NUM_TRAIN_TIMESTEPS = 1000
UNIPC_SIGMA_MAX = np.float32(0.999)  # Ovi's UniPC grid starts at float32(0.999), not 1.0


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow-matching time shift, in float64 and in the operation order diffusers uses."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowScheduler:
    """One solver with Ovi's schedule behind a three-member interface.

    timesteps: [N] model inputs (int64 for unipc / dpm++, float32 for euler);
    sigmas: [N + 1] float32 noise levels, the last one 0;
    step(model_output, timestep, sample): one solver step; the flow prediction and the sample
    share a shape (any, e.g. [B, C, F, H, W] or [B, L, C]); returns the previous sample.
    """

    def __init__(self, solver: str, scheduler: SchedulerMixin) -> None:
        self.solver = solver
        self.scheduler = scheduler  # the diffusers object, for inspection

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def sigmas(self) -> torch.Tensor:
        return self.scheduler.sigmas

    def __len__(self) -> int:
        return len(self.scheduler.timesteps)

    def step(
        self, model_output: torch.Tensor, timestep: torch.Tensor | float, sample: torch.Tensor
    ) -> torch.Tensor:
        """Advance `sample` one step. Pass this scheduler's own `timesteps[i]`, in order.

        The index starts at 0 (`set_begin_index`) and every call advances it by one, whatever
        `timestep` says, so steps must not be skipped or repeated.
        """
        sigmas = self.scheduler.sigmas
        if self.solver == "unipc" and sigmas.device != sample.device:
            # one copy now instead of blocking 0-dim copies inside every UniPC step
            self.scheduler.sigmas = sigmas.to(sample.device)
        return self.scheduler.step(model_output, timestep, sample, return_dict=False)[0]

    def __repr__(self) -> str:
        return f"FlowScheduler({self.solver!r}, steps={len(self)})"


def _unipc(steps: int, shift: float) -> SchedulerMixin:
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        solver_order=2,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    # The default set_timesteps(N) grid is linspace(1, 1/1000, N+1) nudged down by 1e-6: not Ovi's.
    scheduler.set_timesteps(sigmas=np.linspace(UNIPC_SIGMA_MAX, 0, steps + 1)[:-1])
    return scheduler


def _dpmpp(steps: int, shift: float) -> SchedulerMixin:
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=1.0,  # the shift is applied below, once
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    with warnings.catch_warnings():  # diffusers' own np.array(tensor) call; harmless
        warnings.filterwarnings(
            "ignore", message="__array__ implementation", category=DeprecationWarning
        )
        scheduler.set_timesteps(steps)  # resets the solver state; the grid is replaced next
    sigmas = shift_sigmas(np.linspace(1, 0, steps + 1)[:steps], shift)
    scheduler.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
    # float64 product, then truncation: shift(1/6) = 0.4999... gives 499, as in Ovi.
    scheduler.timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    return scheduler


def _euler(steps: int, shift: float) -> SchedulerMixin:
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift
    )
    scheduler.set_timesteps(steps)
    return scheduler


BUILDERS: dict[str, Callable[[int, float], SchedulerMixin]] = {
    "unipc": _unipc,
    "dpm++": _dpmpp,
    "euler": _euler,
}


def make_scheduler(solver: str, steps: int, shift: float) -> FlowScheduler:
    """A fresh scheduler for `steps` denoising steps with Ovi's schedule for `solver`."""
    if solver not in BUILDERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    scheduler = BUILDERS[solver](steps, float(shift))
    scheduler.set_begin_index(0)  # no timestep lookup (host sync) on the first step
    return FlowScheduler(solver, scheduler)
