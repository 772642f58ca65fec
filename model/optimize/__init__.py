"""Transforms applied to a loaded model, by concern:

- `fast_path.py`: the exact speed-ups (fused projections, regional compile, VAE without upcasts,
  the attention check), the `FastPath` plan resolved from `RuntimeOptions`, and the entry points;
- `fp8.py`: fp8 compute (opt-in, approximate);
- `offload.py`: the memory modes (component offload, block offload).

The names below are the public API (`from model import optimize as opt`).
"""

from .fast_path import (
    PLAIN_PATH,
    FastPath,
    FusedGeluFFN,
    attention_candidates,
    check_attention_backends,
    choose_attention_backends,
    choose_clip_attention,
    clip_attention_shapes,
    compile_layers,
    fuse_gelu,
    fuse_projections,
    optimize_fusion,
    optimize_pipeline,
    probe_attention_backends,
    projections_fused,
    reference_style,
    resolve_fast_path,
    uncompile_layers,
    unfuse_projections,
    vae_skip_upcasts,
)
from .fp8 import FP8_DTYPE, FP8_MAX, SCALED_MM_ALIGN, Fp8Linear, disable_fp8, enable_fp8
from .offload import BlockOffload, enable_block_offload, visit_device

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "PLAIN_PATH",
    "SCALED_MM_ALIGN",
    "BlockOffload",
    "FastPath",
    "Fp8Linear",
    "FusedGeluFFN",
    "attention_candidates",
    "check_attention_backends",
    "choose_attention_backends",
    "choose_clip_attention",
    "clip_attention_shapes",
    "compile_layers",
    "disable_fp8",
    "enable_block_offload",
    "enable_fp8",
    "fuse_gelu",
    "fuse_projections",
    "optimize_fusion",
    "optimize_pipeline",
    "probe_attention_backends",
    "projections_fused",
    "reference_style",
    "resolve_fast_path",
    "uncompile_layers",
    "unfuse_projections",
    "vae_skip_upcasts",
    "visit_device",
]
