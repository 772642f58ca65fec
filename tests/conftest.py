"""Shared test setup: offline hub, reference fixtures, one tiny pipeline per session.

`tiny_pipeline` is the tiny model at about 1 s (`tiny_1s`, 25 frames): the tests check
behaviour, and one CLI test (`tests/cli/test_cli_generate.py`) runs the real 5 s length."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach the hub

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_pipeline():
    from model.pipeline import OviPipeline

    return OviPipeline.from_preset("tiny_1s")
