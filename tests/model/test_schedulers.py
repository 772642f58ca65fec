"""model/schedulers.py: Ovi's schedules for unipc / dpm++ / euler, and their steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.conformance import sampler as sampler_case
from model.presets import SOLVERS
from model.schedulers import BUILDERS, FlowScheduler, make_scheduler, shift_sigmas

CASE = Path(__file__).parents[1] / "fixtures" / "reference" / "sampler"


def test_reference_schedules_and_steps():
    checks = sampler_case.scheduler_checks(CASE)
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)
    names = {c.name for c in checks}
    assert "schedule.dpm++_steps30_shift5.0" in names
    assert "scheduler_unit.euler_steps30.samples_after_step" in names


def test_every_solver_has_a_builder():
    assert set(BUILDERS) == set(SOLVERS)


@pytest.mark.parametrize(
    ("solver", "steps", "shift", "message"),
    [
        ("ddim", 10, 5.0, "solver must be one of"),
        ("unipc", 0, 5.0, "steps must be a positive integer"),
        ("unipc", 2.5, 5.0, "steps must be a positive integer"),
        ("euler", 10, 0.0, "shift must be > 0"),
    ],
)
def test_bad_arguments(solver, steps, shift, message):
    with pytest.raises(ValueError, match=message):
        make_scheduler(solver, steps, shift)


# Held-out style settings: the documented rules, not the public fixture's numbers.
@pytest.mark.parametrize(("steps", "shift"), [(1, 1.0), (7, 3.0), (12, 5.0), (40, 8.0)])
def test_schedule_rules(steps, shift):
    unipc = make_scheduler("unipc", steps, shift)
    grid = shift_sigmas(np.linspace(np.float32(0.999), 0, steps + 1)[:-1], shift)
    assert unipc.timesteps.dtype == torch.int64
    np.testing.assert_allclose(unipc.sigmas[:-1].numpy(), grid, atol=1e-6)
    assert unipc.timesteps.tolist() == (grid * 1000).astype(np.int64).tolist()

    dpm = make_scheduler("dpm++", steps, shift)
    grid = shift_sigmas(np.linspace(1, 0, steps + 1)[:steps], shift)
    assert dpm.timesteps.dtype == torch.int64
    assert dpm.timesteps[0].item() == 1000
    assert dpm.timesteps.tolist() == (grid * 1000).astype(np.int64).tolist()
    np.testing.assert_allclose(dpm.sigmas[:-1].numpy(), grid, atol=1e-7)

    euler = make_scheduler("euler", steps, shift)
    lo = shift_sigmas(np.float64(1 / 1000), shift)
    twice = shift_sigmas(np.linspace(1.0, lo, steps), shift)  # the shift applied twice
    assert euler.timesteps.dtype == torch.float32
    np.testing.assert_allclose(euler.sigmas[:-1].numpy(), twice, atol=1e-6)
    np.testing.assert_allclose(euler.timesteps.numpy(), twice * 1000, rtol=1e-6)

    for scheduler in (unipc, dpm, euler):
        assert len(scheduler) == steps and len(scheduler.sigmas) == steps + 1
        assert scheduler.sigmas[-1].item() == 0.0
        assert bool((scheduler.sigmas[1:] < scheduler.sigmas[:-1]).all())


@pytest.mark.parametrize("solver", SOLVERS)
def test_step_keeps_shape_and_recovers_a_straight_flow(solver):
    # x_t = (1 - s) x0 + s noise, with the exact velocity noise - x0 at every step: every
    # solver must land on x0 at sigma 0.
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 48, 3, 4, 6, generator=gen)
    noise = torch.randn(2, 48, 3, 4, 6, generator=gen)
    scheduler = make_scheduler(solver, 8, 5.0)
    assert isinstance(scheduler, FlowScheduler)
    sample = (1 - scheduler.sigmas[0]) * x0 + scheduler.sigmas[0] * noise
    for t in scheduler.timesteps:
        sample = scheduler.step(noise - x0, t, sample)
        assert sample.shape == x0.shape and sample.dtype == torch.float32
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_instances_are_independent(solver):
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 10, 20, generator=gen)
    outputs = torch.randn(4, 1, 10, 20, generator=gen)
    results = []
    for _ in range(2):  # a second scheduler must not see the first one's history
        scheduler, x = make_scheduler(solver, 4, 5.0), sample
        for t, out in zip(scheduler.timesteps, outputs, strict=True):
            x = scheduler.step(out, t, x)
        results.append(x)
    assert torch.equal(results[0], results[1])
