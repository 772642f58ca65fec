"""Ovi in plain PyTorch: the fusion DiT, its text/video/audio codecs, loaders and the pipeline.

`from model import OviPipeline` is resolved lazily, so light modules (`model.presets`,
`model.text`) import without pulling in torch, transformers and diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["GenerationCancelled", "OviOutput", "OviPipeline", "PRESETS", "StepInfo"]

if TYPE_CHECKING:
    from .pipeline import GenerationCancelled, OviOutput, OviPipeline, StepInfo
    from .presets import PRESETS


def __getattr__(name: str) -> Any:
    if name == "PRESETS":
        from .presets import PRESETS

        return PRESETS
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
