"""RuntimeOptions: how a pipeline runs (placement, memory modes, precision, the fast path).

One frozen dataclass holds every runtime knob, spelled once. The `ovi` CLI's model flags
(`cli/flags.py`) and the server's settings (`server/settings.py`, flags > `OVI_*` env > TOML) are
generated from its fields, so a new knob is one field here plus the code that acts on it:

    blur: bool = option(False, "blur every frame")   # -> --blur, OVI_BLUR, `blur = true`

What a clip looks like (steps, guidance, seed, size) is per request: `model/sampling.py`.
Which weights are loaded is the `ModelSource` below, given to `load_pipeline`
(`model/pipeline.py`). The architecture is `model/config.py`. Nothing here imports torch, so the
server's API process can read these too.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Dtype = Literal["bfloat16", "float16", "float32"]
# How the initial noise is drawn (`model/pipeline.py` `draw_noise`): "official" = the official
# release's procedure on the compute device (reproduces its clips, and fal's); "portable" = one
# CPU float32 generator (the same starting latents on every device).
NoiseMode = Literal["official", "portable"]
NOISE_MODES: tuple[str, ...] = ("official", "portable")
Quantize = Literal["none", "int8", "fp8_row"]


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    negatable: bool = False,
    cli: bool = True,
) -> Any:
    """A dataclass field with the text its CLI flag and setting show.

    flag: the CLI spelling when it is not `--<name-with-dashes>`. negatable: a `bool | None`
    whose `None` means "decide from the device" gets `--x/--no-x`. cli=False: no generated flag
    (the CLI spells it another way, e.g. `--resolution HxW` for height and width)."""
    metadata = {"help": help, "flag": flag, "negatable": negatable, "cli": cli}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelSource:
    """Which weights a pipeline loads: a real variant from `weights_dir`, or a random-weight
    preset (`tiny`, `tiny_1s`) built in memory."""

    name: str  # a variant or preset of `model/presets.py`
    weights_dir: Path | None = None  # real variants; None: `model.weights.DEFAULT_WEIGHTS_DIR`


@dataclass(frozen=True)
class RuntimeOptions:
    """Every runtime knob of `OviPipeline` (see the module docstring). The defaults are the
    fastest exact setting on the device: bf16 with the fast path on CUDA, the plain float32 path
    (the one conformance checks) on the CPU."""

    # --- placement and precision ---
    device: str | None = option(None, "torch device: cuda, cuda:1, cpu (default: cuda if present)")
    dtype: Dtype | None = option(
        None,
        "compute dtype of the DiT, umT5 and Wan VAE (default: bfloat16 on CUDA, float32 on CPU)",
    )
    fp8: bool = option(
        False,
        "load the float8 fusion file (half the disk and host memory; "
        "computed in bf16 unless --fp8-compute)",
    )
    fp8_compute: bool = option(
        False,
        "compute the DiT's block linears in float8 (torch._scaled_mm; CUDA only, approximate)",
    )

    # --- memory modes (README: memory table) ---
    cpu_offload: bool = option(
        False, "keep every component on the CPU; each visits the GPU while it runs"
    )
    offload_text_encoder: bool | None = option(
        None,
        "keep only umT5 on the CPU, moved to the GPU for prompt encoding (default: on for a GPU "
        "of less than 42 GiB, where all-resident does not fit)",
        negatable=True,
    )
    block_offload: bool = option(
        False,
        "stream the DiT's layers from pinned host memory one "
        "layer ahead (24-32 GB GPUs); the other components use "
        "--cpu-offload",
    )

    # --- the fast path (model/optimize) ---
    fast_path: bool | None = option(
        None,
        "the exact fast-path transforms: fused projections, "
        "compiled layers, VAE without upcasts (default: on for "
        "CUDA, off on CPU)",
        negatable=True,
    )
    compile: bool | None = option(
        None,
        "torch.compile the fusion layer (default: on with the fast path on CUDA)",
        negatable=True,
    )
    batch_cfg: bool = option(False, "run both guidance passes as one batch of 2")

    # --- parity with the official release (README: "Reproducing a clip") ---
    noise: NoiseMode = option(
        "official",
        "initial noise: official (the official release's draw on the compute device: its seeds "
        "give its clips) or portable (one CPU float32 generator: the same latents on every "
        "device); a request's own `noise` wins",
    )
    fast_vae: bool = option(
        False,
        "compute the Wan VAE in the pipeline dtype (bf16 on CUDA) without fp32 norms: faster, "
        "not the official pixels (default: float32 compute on the bf16-rounded weights, as the "
        "official release)",
    )
    # --- one clip on several devices (model/parallel) ---
    cfg_parallel: bool = option(
        False, "run the positive and the negative guidance pass on two ranks at once"
    )
    sp_degree: int = option(
        1,
        "Ulysses sequence parallelism: split each tower's tokens over this many ranks",
        flag="--sp",
    )
    world_size: int | None = option(
        None, "CPU ranks (gloo) for one clip: 2 with --cfg-parallel, K with --sp K, 2K with both"
    )
    gpus: str | None = option(None, "CUDA devices for one clip, one rank each (e.g. 0,1,2,3; NCCL)")
    # --- faster and smaller on purpose: approximate (README "Every knob": measured cost) ---
    lora: tuple[str, ...] = option(
        (),
        "LoRA file FILE[:SCALE] merged into the DiT at load, on the tower its keys name "
        "(repeatable; SCALE default 1)",
    )
    fast: bool = option(
        False,
        "few-step mode: FastWan LoRA on the video tower, 6 steps (10 for 10 s), guidance 1 "
        "(no negative pass), shift 6",
    )
    cache_threshold: float = option(
        0.0,
        "step caching: reuse the towers' residual while their estimated change stays below T "
        "(0 = off)",
    )
    quantize: Quantize = option(
        "none",
        "8-bit DiT block linears: int8 (weight-only, per-channel) or fp8_row (float8, "
        "row-wise scales; emulated off CUDA)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.lora, str):
            object.__setattr__(self, "lora", (self.lora,))
        object.__setattr__(self, "lora", tuple(self.lora))
        if not self.cache_threshold >= 0:
            raise ValueError(f"cache_threshold must be >= 0, got {self.cache_threshold!r}")
        if self.quantize not in typing.get_args(Quantize):
            raise ValueError(
                f"quantize must be one of {', '.join(typing.get_args(Quantize))},"
                f" got {self.quantize!r}"
            )
        if self.fast and self.cfg_parallel:
            raise ValueError(
                "--fast runs no negative pass, so --cfg-parallel has nothing to split; use --sp"
            )
        if self.quantize != "none" and (self.block_offload or self.fp8_compute):
            raise ValueError(
                "quantize is not combined with block_offload or fp8_compute; choose one"
            )
        if self.fp8_compute and (self.device or "").startswith("cpu"):
            raise ValueError(
                "fp8 compute needs a CUDA GPU (torch._scaled_mm on float8 e4m3); device is cpu"
            )
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        self._check_parallel()
        if self.dtype is not None and self.dtype not in typing.get_args(Dtype):
            raise ValueError(
                f"dtype must be one of {', '.join(typing.get_args(Dtype))}, got {self.dtype!r}"
            )

    @property
    def parallel_size(self) -> int:
        """Ranks one clip runs on: 2 with `cfg_parallel`, times `sp_degree`."""
        return (2 if self.cfg_parallel else 1) * self.sp_degree

    def gpu_list(self) -> list[int]:
        """`gpus` as device indices ([] when not given)."""
        return [int(g) for g in self.gpus.split(",") if g.strip()] if self.gpus else []

    def _check_parallel(self) -> None:
        """The ranks `world_size` or `gpus` give must be the ones cfg_parallel x sp ask for."""
        if self.sp_degree < 1:
            raise ValueError(f"--sp must be at least 1, got {self.sp_degree}")
        if self.world_size is not None and self.world_size < 1:
            raise ValueError(f"--world-size must be at least 1, got {self.world_size}")
        if self.gpus is not None:
            try:
                gpus = self.gpu_list()
            except ValueError:
                raise ValueError(
                    f"--gpus must list device numbers like 0,1,2,3, got {self.gpus!r}"
                ) from None
            if len(set(gpus)) != len(gpus) or not gpus:
                raise ValueError(f"--gpus must list distinct device numbers, got {self.gpus!r}")
            if self.world_size is not None:
                raise ValueError("give --gpus (CUDA) or --world-size (CPU ranks), not both")
        if self.world_size is not None and self.world_size != self.parallel_size:
            raise ValueError(
                f"{self.world_size} ranks given but --cfg-parallel x --sp asks for"
                f" {self.parallel_size} (2 with --cfg-parallel, K with --sp K, 2K with both)"
            )
        if self.gpus is not None and len(self.gpu_list()) % self.parallel_size:
            raise ValueError(
                f"{len(self.gpu_list())} GPUs given but --cfg-parallel x --sp asks for"
                f" {self.parallel_size} per clip (2 with --cfg-parallel, K with --sp K, 2K with"
                " both): give one clip's GPUs, or a multiple for a worker per slice"
            )

    def gpu_groups(self) -> list[list[int]]:
        """`gpus` cut into one slice of `parallel_size` devices per worker ([] without gpus)."""
        gpus, k = self.gpu_list(), self.parallel_size
        return [gpus[i : i + k] for i in range(0, len(gpus), k)]

    def replace(self, **changes: Any) -> RuntimeOptions:
        """A copy with `changes`; `None` values are dropped (a flag that was not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_mapping(cls, values: typing.Mapping[str, Any]) -> RuntimeOptions:
        """The options named in `values` (any object's fields: argparse, settings), others
        default; `None` means "not given"."""
        return cls().replace(**{f.name: values.get(f.name) for f in dataclasses.fields(cls)})


def option_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of a dataclass made with `option(...)` fields, in order: what the
    CLI-flag and settings generators read."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]
