"""Conformance on held-out-like sets: the public case layout with other tiny configs.

`heldout_gen.py` builds the sets (see its docstring for what a pass does and does not prove):
other head dims, depths, text_len, numbers of prompts and buckets, VAE depths and attn_scales,
audio widths, vocoder stages, solvers (euler, dpm++), slg_layer False / 2, step counts, shifts,
latent grids and i2v image sizes. Every runner must read all of that from the case.
"""

from __future__ import annotations

import pytest
from heldout_gen import VARIANTS, build

from tools.conformance import CASES, run_conformance


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_heldout_like_set_passes(tmp_path, variant):
    root = build(tmp_path / variant, variant)
    lines: list[str] = []
    passed, failed = run_conformance(root, echo=lines.append)
    problems = [line for line in lines[:-1] if not line.startswith("PASS")]
    assert failed == 0 and not problems, "\n".join(problems)
    cases = {line.split()[1].split("/")[0] for line in lines[:-1]}
    assert cases == set(CASES) - {"layout"}  # every generated case ran and reported
    assert passed > 100
