"""The reference fixtures the model tests read (copied from `../shared/reference/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"


def layout(name: str) -> dict[str, Any]:
    """A real checkpoint's full-size layout, `layout/<name>.json` (tensors, counts)."""
    return json.loads((REFERENCE / "layout" / f"{name}.json").read_text())
