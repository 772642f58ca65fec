"""The bench driver always brings numbers back: a failing section is recorded and the next one
runs, the JSON is valid after every section, and an expired budget interrupts the running
section and leaves a valid JSON listing what did not run and why.

In-process runs of `bench.run.main` at `--small` with throw-away sections registered through
the public `bench.sections.section` decorator, next to real ones (`totals`, which composes the
totals from measured parts, here with none measured; `memory` and `audio` where they must not
run)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from bench import sections
from bench.run import PLANS, main


@pytest.fixture()
def temp_sections():
    names: list[str] = []

    def add(name: str, fn, keys: tuple[str, ...] = ()) -> None:
        sections.section(name, keys)(fn)
        names.append(name)

    yield add
    for name in names:
        sections.unregister(name)


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "r.json"
    assert main(["--small", "--out", str(out), *args]) == 0
    return json.loads(out.read_text())


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, temp_sections):
    seen: dict = {}

    def boom(bench) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def peek(bench) -> None:  # the JSON on disk already records `boom`
        seen.update(json.loads((tmp_path / "r.json").read_text()))
        bench.figures["test_peek_value"] = 1.0

    temp_sections("test_boom", boom, keys=("test_boom_ms",))
    temp_sections("test_peek", peek, keys=("test_peek_value",))
    result = _run(tmp_path, "--sections", "test_boom,test_peek,totals")

    state = result["sections"]["test_boom"]
    assert state["status"] == "failed"
    assert state["error"].startswith("RuntimeError: CUDA error: an illegal memory access")
    assert "raise RuntimeError" in state["traceback"]
    assert result["figures"]["test_boom_ms"] is None
    assert result["notes"]["test_boom_ms"].startswith("section failed: RuntimeError")
    # the next sections ran: a throw-away one and a real one
    assert result["sections"]["test_peek"]["status"] == "ok"
    assert result["figures"]["test_peek_value"] == 1.0
    assert result["sections"]["totals"]["status"] == "ok"
    assert result["notes"]["pipeline_50_steps_composed_s"].startswith("needs the measured parts")
    # written after `test_boom`, before `test_peek` ran
    assert seen["sections"]["test_boom"]["status"] == "failed"
    assert seen["sections"]["test_peek"]["status"] == "running"
    assert seen["sections"]["totals"] == {"status": "not run", "reason": "not reached yet"}
    # sections not selected are listed with the reason
    assert result["sections_not_run"]["dit"] == "not selected (--sections)"
    assert result["notes"]["step_704x704x121_ours_ms"].startswith("section not run: not selected")


def test_an_expired_budget_interrupts_the_section_and_leaves_a_valid_json(tmp_path, temp_sections):
    def slow(bench) -> None:
        bench.figures["test_slow_first_s"] = 0.5
        time.sleep(20)  # the budget's alarm ends this after ~1 s
        bench.figures["test_slow_never"] = 1.0

    temp_sections("test_slow", slow, keys=("test_slow_first_s", "test_slow_never"))
    t0 = time.perf_counter()
    result = _run(tmp_path, "--sections", "test_slow,audio,memory", "--budget-s", "1")
    assert time.perf_counter() - t0 < 10
    slow_state = result["sections"]["test_slow"]
    assert slow_state["status"] == "interrupted"
    assert slow_state["error"] == "budget of 1 s expired"
    assert 0.9 < slow_state["wall_s"] < 5
    assert result["figures"]["test_slow_first_s"] == 0.5  # what it measured before is kept
    assert result["figures"]["test_slow_never"] is None
    assert result["notes"]["test_slow_never"] == "section interrupted: budget of 1 s expired"
    not_run = result["sections_not_run"]
    assert not_run["audio"] == not_run["memory"] == "budget of 1 s expired"
    assert "test_slow" not in not_run and not_run["dit"] == "not selected (--sections)"
    assert result["notes"]["est_pipeline_peak_gib"] == "section not run: budget of 1 s expired"
    assert result["meta"]["budget_s"] == 1.0


def test_a_zero_budget_runs_nothing_and_still_writes(tmp_path):
    result = _run(tmp_path, "--plan", "lease", "--budget-s", "0")
    lease_sections, _ = PLANS["lease"]
    for name in lease_sections:
        assert result["sections"][name]["status"] == "not run"
        assert result["sections_not_run"][name].startswith("budget of 0 s used up")
    # the analytical figures need no section
    assert round(result["figures"]["flop_per_forward_704x704x121_reference_style_tflop"], 1) == (
        239.8
    )
    assert result["meta"]["plan"] == "lease"


def test_plans_name_known_sections():
    registered = sections.registered()
    for plan, (names, _shapes) in PLANS.items():
        assert set(names) <= set(registered), plan
    with pytest.raises(ValueError, match="registered twice"):
        sections.section("dit")(lambda bench: None)


LEASE = Path(__file__).resolve().parents[2] / "bench" / "gpu-lease.sh"


def test_the_lease_command_refuses_an_unknown_plan(tmp_path):
    proc = subprocess.run(
        [str(LEASE), "huge"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: first argument must be main or 960, got 'huge'"
