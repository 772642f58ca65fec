"""Ovi in plain PyTorch: the fusion DiT, its text/video/audio codecs, loaders and the pipeline.

`from model import OviPipeline` is resolved lazily, so light modules (`model.presets`,
`model.options`, `model.sampling`) import without pulling in torch, transformers and diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "GenerationCancelled",
    "ModelSource",
    "OviOutput",
    "OviPipeline",
    "PRESETS",
    "RuntimeOptions",
    "SamplingParams",
    "StepInfo",
    "load_pipeline",
]

if TYPE_CHECKING:
    from .options import ModelSource, RuntimeOptions
    from .pipeline import GenerationCancelled, OviOutput, OviPipeline, StepInfo, load_pipeline
    from .presets import PRESETS
    from .sampling import SamplingParams

_LIGHT = {
    "PRESETS": "presets",
    "ModelSource": "options",
    "RuntimeOptions": "options",
    "SamplingParams": "sampling",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LIGHT.get(name, 'pipeline')}", __name__)
    return getattr(module, name)
