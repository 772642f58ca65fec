"""model/schedulers.py: Ovi's schedules for unipc / dpm++ / euler, and their steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.sampling import SOLVERS
from model.schedulers import BUILDERS, FlowScheduler, make_scheduler, shift_sigmas
from tools.conformance import sampler as sampler_case

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


# --- host syncs -------------------------------------------------------------------------------


class _HostTraffic(TorchDispatchMode):
    """Records ops that read a device value on the host (syncs on CUDA) and copies between
    devices (blocking host->device copies on CUDA). The `meta` device stands in for the GPU."""

    READS = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "_linalg_check_errors"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name == "_to_copy" and args[0].device != out.device:
            self.seen.append(f"copy {args[0].device}->{out.device}")
        elif name in self.READS:
            self.seen.append(name)
        return out


def _unipc_traffic(scheduler, steps: int, device: str) -> list[list[str]]:
    x = torch.zeros(1, 4, 3, device=device)
    per_step = []
    for t in scheduler.timesteps[:steps]:
        with _HostTraffic() as mode:
            x = scheduler.step(x, t, x)
        per_step.append(mode.seen)
    return per_step


def test_unipc_steps_copy_nothing_and_look_nothing_up():
    steps = 6
    # before: diffusers' UniPC as built, stepped as Ovi's loop steps it
    raw = BUILDERS["unipc"](steps, 5.0)
    before = _unipc_traffic(FlowScheduler("raw", raw), steps, "meta")
    assert before[0][:2] == ["nonzero", "_local_scalar_dense"]  # the timestep lookup
    assert all(step.count("copy cpu->meta") >= 5 for step in before[1:])  # 0-dim sigma copies
    # after: one copy of the sigma table on the first step, then nothing but the corrector's
    # linalg.solve error check (steps 3..N, documented in bench/README.md "Known gaps")
    after = _unipc_traffic(make_scheduler("unipc", steps, 5.0), steps, "meta")
    assert after[0] == ["copy cpu->meta"]
    assert after[1] == []
    assert all(step == ["_linalg_check_errors"] for step in after[2:])


def test_no_tensor_item_calls_per_step(monkeypatch):
    calls = []
    item = torch.Tensor.item

    def counting_item(self):
        calls.append(1)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    for build, expected in ((lambda: FlowScheduler("raw", BUILDERS["unipc"](8, 5.0)), 1),
                            (lambda: make_scheduler("unipc", 8, 5.0), 0)):  # fmt: skip
        scheduler, x = build(), torch.zeros(1, 4)
        calls.clear()
        for t in scheduler.timesteps:
            x = scheduler.step(x, t, x)
        assert len(calls) == expected  # before: one, on the first step (index lookup)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(("steps", "shift"), [(1, 5.0), (6, 5.0), (50, 5.0), (250, 5.0), (40, 8)])
def test_begin_index_is_where_the_timestep_lookup_starts(solver, steps, shift):
    scheduler = make_scheduler(solver, steps, shift)
    assert scheduler.scheduler.begin_index == 0
    assert scheduler.scheduler.index_for_timestep(scheduler.timesteps[0]) == 0


@pytest.mark.parametrize("solver", SOLVERS)
def test_steps_equal_diffusers_stepping_bit_for_bit(solver):
    gen = torch.Generator().manual_seed(2)
    sample = torch.randn(1, 10, 20, generator=gen)
    outputs = torch.randn(30, 1, 10, 20, generator=gen)
    ours, raw = make_scheduler(solver, 30, 5.0), BUILDERS[solver](30, 5.0)
    x = y = sample
    for t, out in zip(ours.timesteps, outputs, strict=True):
        x = ours.step(out, t, x)
        y = raw.step(out, t, y, return_dict=False)[0]
        assert torch.equal(x, y)


def test_unipc_with_repeated_top_timesteps_completes():
    # shift 5, 251+ steps: int64 timesteps repeat at the top (999, 999, ...); diffusers' lookup
    # started at index 1 there and its last step failed an assertion
    scheduler = make_scheduler("unipc", 300, 5.0)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]
    x = torch.ones(1, 4)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros_like(x), t, x)
    assert torch.isfinite(x).all()
