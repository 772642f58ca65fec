"""Conformance against the official reference vectors (`../shared/reference` format).

Each case folder (fusion, sampler, t5, wan_vae, mmaudio, tables, layout) has a runner module
here with `run(case_dir) -> list[Check]`. Runners go through the same code paths the pipeline
uses (same loaders, converters and modules), in float32 on CPU. `run_conformance` runs every
case present in a folder, prints one line per compared tensor, then `N passed, M failed`.
"""

from __future__ import annotations

import importlib
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

THRESHOLD = 1e-4  # rel L2, fp32; ~100x above the measured fp32-vs-fp64 floor

# folder name -> runner module (tools/conformance/<module>.py)
CASES: dict[str, str] = {
    "fusion": "fusion",
    "sampler": "sampler",
    "t5": "t5",
    "wan_vae": "wan_vae",
    "mmaudio": "mmaudio",
    "tables": "tables",
    "layout": "layout",
}


@dataclass(frozen=True)
class Check:
    """One compared tensor (rel_l2 set) or one exact check (rel_l2 None, e.g. a layout)."""

    name: str
    passed: bool
    rel_l2: float | None = None
    detail: str = ""

    def line(self, prefix: str = "") -> str:
        status = "PASS" if self.passed else "FAIL"
        err = f" rel_l2={self.rel_l2:.3e}" if self.rel_l2 is not None else ""
        detail = f" {self.detail}" if self.detail else ""
        return f"{status} {prefix}{self.name}{err}{detail}"


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 over the whole tensor (shape must match)."""
    if tuple(out.shape) != tuple(ref.shape):
        return float("inf")
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def compare(name: str, out: torch.Tensor, ref: torch.Tensor, threshold: float = THRESHOLD) -> Check:
    err = rel_l2(out, ref)
    detail = (
        ""
        if tuple(out.shape) == tuple(ref.shape)
        else f"shape {list(out.shape)} != {list(ref.shape)}"
    )
    return Check(name, err < threshold, err, detail)


def exact(name: str, ok: bool, detail: str = "") -> Check:
    return Check(name, bool(ok), None, detail)


def load_case_json(case_dir: Path) -> dict:
    return json.loads((case_dir / "case.json").read_text())


def run_case(name: str, case_dir: Path) -> list[Check]:
    """Run one case folder; an exception becomes one failed check naming the case."""
    try:
        module = importlib.import_module(f"{__name__}.{CASES[name]}")
        runner: Callable[[Path], list[Check]] = module.run
        with torch.no_grad():
            return runner(case_dir)
    except Exception as exc:  # a broken case must fail loudly, not stop the other cases
        logger.debug("case %s raised", name, exc_info=True)
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return [Check("(case)", False, None, f"error: {tb}")]


def run_conformance(root: Path | str, echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Run every known case present under `root`; return (passed, failed)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"reference folder not found: {root}")
    passed = failed = 0
    present = [name for name in CASES if (root / name).is_dir()]
    if not present:
        raise FileNotFoundError(f"no reference cases ({', '.join(CASES)}) under {root}")
    for name in present:
        for check in run_case(name, root / name):
            echo(check.line(prefix=f"{name}/"))
            passed += check.passed
            failed += not check.passed
    echo(f"{passed} passed, {failed} failed")
    return passed, failed
