"""The fast path: the transforms `resolve_fast_path` picks from `RuntimeOptions`, applied to
a loaded `FusionModel` (and pipeline) after loading.

Every transform keeps the outputs equal to float rounding (fp8 compute excepted: opt-in, with
its error measured by `python -m bench`); `tests/model/test_optimize.py` checks each one on CPU in
float32 against the untransformed model, on the tiny preset and on the reference fusion case.

| transform                        | what it does                                          | default         |
| -------------------------------- | ----------------------------------------------------- | --------------- |
| `fuse_projections`               | one GEMM for self-attn q/k/v, text k/v, fusion k/v    | on              |
| time embedding per timestep      | already in `FusionModel` (U = 1 or 2 rows, not L)     | always          |
| no host syncs in the step        | the fusion forward has none; `denoise` keeps the      | always          |
|                                  | timesteps on the device (the diffusers UniPC step     |                 |
|                                  | still syncs: see `bench/README.md`)                   |                 |
| `compile_layers`                 | regional `torch.compile` of `fusion_layer`, one graph | CUDA on, CPU off|
|                                  | for all layers, `dynamic=False`                       |                 |
| `FastPath.batch_cfg`             | both CFG passes as one batch (`forward_cfg`)          | off until the   |
|                                  |                                                       | bench shows gain|
| `vae_skip_upcasts`               | Wan VAE: no fp32 round trip in nearest upsampling     | on for a bf16   |
|                                  | (exact) and in the RMS norms (bf16 rounding)          | VAE (fast_vae)  |
| `BlockOffload` (`offload.py`)    | layer weights in pinned host memory, streamed into    | opt-in          |
| (`FastPath.block_offload`)       | two device slots one layer ahead (side stream)        |                 |
| `enable_fp8` (`fp8.py`)          | block linears as float8 e4m3 `torch._scaled_mm`,      | opt-in, CUDA    |
| (`FastPath.fp8`)                 | per-tensor scales                                     |                 |
| `check_attention_backends`       | startup check of the CUDA SDPA backends (and FA3)     | CUDA on         |
| `FastPath.clip_cache`            | RoPE tables, embedded texts, text K/V once per clip   | on              |
| `FastPath.share_first_layer`     | the guidance passes' text-free work once per step:    | on; off with    |
|                                  | patch + time embeddings (time MLP once per step) and  | cpu/block       |
|                                  | layer 0's self-attentions; sequential passes through  | offload or      |
|                                  | the clip cache (one slot, taken by the next pass:     | fast_vae, whose |
|                                  | +0.62 GiB est. at 704x704x121, under the VAE decode's | peak is the     |
|                                  | 4.81), `forward_cfg` on B rows repeated to 2B         | denoise phase   |
| `FastPath.cache_fp32_weights`    | the time MLPs' fp32 weight copies once per clip (bf16 | on (same)       |
|                                  | weights only; fp32 weights are never copied)          |                 |
| `FastPath.fused_gelu`            | FFN up-projection + tanh GELU as one                  | off: decided by |
| (`fuse_gelu`, `FusedGeluFFN`)    | `torch._addmm_activation` (cuBLASLt GELU epilogue);   | the bench's     |
|                                  | CUDA only (CPU's kernel is the erf GELU); inductor    | `fused_gelu_    |
|                                  | keeps it as a fallback kernel (not decomposed)        | speedup`        |
| `FastPath.attention_by_shape`    | per attention shape the fastest backend the startup   | off: bench's    |
| (`choose_attention_backends`)    | check kept, timed once per shape before a clip's      | `attention_by_  |
|                                  | first step (read when the layers are traced; CUDA)    | shape_speedup`  |
| `FastPath.vae_channels_last`     | Wan VAE decoder 3-D convs in channels_last_3d         | off: bench's    |
|                                  |                                                       | `vae_channels_  |
|                                  |                                                       | last_speedup`   |
| `FastPath.vae_compile`           | compiled norm + SiLU pairs of the pieces' decoder     | off: bench's    |
|                                  | (with `compile`)                                      | `vae_compiled_  |
|                                  |                                                       | speedup`        |

CUDA graphs (`compile_mode="reduce-overhead"`) are a bench variant only (`cuda_graphs_speedup`).
The switches marked "bench's" are unmeasured (no GPU yet): their defaults stay off until the
named key says they pay. `tests/model/test_exact_gains.py` checks each switch on CPU in float32.

Order: fuse, then fp8 (it quantises the fused linears), then offload (it streams whatever
parameters the blocks hold), then compile. `reference_style(model)` temporarily undoes the
transforms for the benchmark's comparison path.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import attention as attn
from ..modules.fusion import (
    ClipCache,
    FusableProjections,
    FusionModel,
    fusion_layer,
    fusion_layer_cross,
    fusion_layer_self,
)
from ..options import RuntimeOptions
from .fp8 import Fp8Linear, enable_fp8
from .offload import enable_block_offload

if TYPE_CHECKING:
    from ..pipeline import OviPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPath:
    """The resolved plan: which transforms `optimize_fusion` / `optimize_pipeline` apply (see
    the module table). Users set `RuntimeOptions`; benchmarks may build one directly."""

    fuse_projections: bool = True
    compile: bool | None = None  # None: on when the model is on CUDA
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    batch_cfg: bool = False
    vae_skip_upcasts: bool = True  # only acts on a bf16/fp16 VAE
    fp8: bool = False  # fp8 compute (CUDA only through the pipeline)
    block_offload: bool = False
    check_attention: bool = True
    # per-clip reuse of the RoPE tables, embedded texts and text K/V (`FusionModel.clip()`)
    clip_cache: bool = True
    # the guidance passes' shared text-free work (embeddings, layer 0's self-attentions) once
    share_first_layer: bool = True
    # the time MLPs' fp32 weight copies kept for the clip (with clip_cache; bf16 weights only)
    cache_fp32_weights: bool = True
    # FFN up-projection + tanh GELU as one GEMM with a GELU epilogue (CUDA; decided by the bench)
    fused_gelu: bool = False
    # attention backend per shape from timings before the first step (CUDA only; it never ran
    # on a GPU here: off until the bench's attention_by_shape_speedup says it pays)
    attention_by_shape: bool = False
    # Wan VAE decoder: channels-last 3-D convs / compiled decoder blocks (decided by the bench)
    vae_channels_last: bool = False
    vae_compile: bool = False


# No transform: the base that the memory/batching options go on when the fast path is off
# (e.g. on CPU, where the plain float32 path is the one conformance checks).
PLAIN_PATH = FastPath(
    fuse_projections=False, compile=False, vae_skip_upcasts=False, check_attention=False,
    clip_cache=False, share_first_layer=False, cache_fp32_weights=False,
)  # fmt: skip


def resolve_fast_path(runtime: RuntimeOptions, device: torch.device | str) -> FastPath | None:
    """The plan for `runtime` on `device`; None is the plain path (no transform).

    `runtime.fast_path` None: on for CUDA, off on CPU (CPU stays the path conformance checks).
    `compile`, `batch_cfg`, `block_offload`, `fp8_compute` go on top of the resolved plan (or of
    `PLAIN_PATH` where it is None). fp8 compute on a non-CUDA device is a ValueError."""
    device = torch.device(device)
    on = device.type == "cuda" if runtime.fast_path is None else runtime.fast_path
    config = FastPath() if on else None
    modes: dict[str, bool] = {
        k: True
        for k, v in (
            ("batch_cfg", runtime.batch_cfg),
            ("block_offload", runtime.block_offload),
            ("fp8", runtime.fp8_compute),
        )
        if v
    }
    if runtime.compile is not None:
        modes["compile"] = runtime.compile
    if modes:
        config = replace(config or PLAIN_PATH, **modes)
    if config is not None and (runtime.cpu_offload or runtime.block_offload or runtime.fast_vae):
        # these modes' peak is the denoise phase (the bf16 VAE decode needs less than a step):
        # nothing extra held across the guidance passes (`bench --sections memory`)
        config = replace(config, share_first_layer=False, cache_fp32_weights=False)
    if config is not None and config.fp8 and device.type != "cuda":
        raise ValueError(
            f"fp8 compute needs a CUDA GPU (torch._scaled_mm on float8 e4m3); device is {device}"
        )
    return config


# ---------------------------------------------------------------------------------------------
# 1. Fused projections
# ---------------------------------------------------------------------------------------------


def _fusable(model: nn.Module) -> Iterator[FusableProjections]:
    return (m for m in model.modules() if isinstance(m, FusableProjections))


def fuse_projections(model: nn.Module) -> nn.Module:
    """Self-attn q/k/v -> `qkv`, text k/v -> `kv`, fusion k/v -> `kv_fusion` (in place).

    The separate weights are freed; `state_dict()` still has the official keys and
    `load_state_dict()` still takes them (strict), see `FusableProjections`.
    """
    for module in _fusable(model):
        module.fuse_projections()
    return model


def unfuse_projections(model: nn.Module) -> nn.Module:
    for module in _fusable(model):
        module.unfuse_projections()
    return model


def projections_fused(model: nn.Module) -> bool:
    return any(m.fused for m in _fusable(model))


class FusedGeluFFN(nn.Sequential):
    """A block FFN (`ffn.0` Linear, tanh GELU, `ffn.2` Linear) whose up-projection and GELU
    run as one `torch._addmm_activation(..., use_gelu=True)`: on CUDA one cuBLASLt GEMM with a
    tanh-GELU epilogue (no separate pass over the [B*L, ffn_dim] activation). Same children,
    same state-dict keys. Off CUDA (and for fp8 linears) the plain modules run: torch's CPU
    kernel of `_addmm_activation` applies the erf GELU, not the model's tanh one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = self[0], self[2]
        if not x.is_cuda or type(up) is not nn.Linear or up.bias is None:
            return super().forward(x)
        h = torch._addmm_activation(
            up.bias, x.reshape(-1, x.shape[-1]), up.weight.t(), use_gelu=True
        )
        return down(h.reshape(*x.shape[:-1], h.shape[-1]))


def fuse_gelu(model: FusionModel, enable: bool = True) -> int:
    """Swap every block's FFN for `FusedGeluFFN` (in place; `enable=False` swaps back).
    Returns how many changed."""
    changed = 0
    for tower in (model.video_model, model.audio_model):
        for block in tower.blocks:
            ffn = block.ffn
            gelu = ffn[1]
            if enable and type(ffn) is nn.Sequential:
                if not (isinstance(gelu, nn.GELU) and gelu.approximate == "tanh"):
                    raise ValueError(f"fused GELU needs a tanh GELU in the FFN, got {gelu}")
                ffn.__class__ = FusedGeluFFN
            elif not enable and type(ffn) is FusedGeluFFN:
                ffn.__class__ = nn.Sequential
            else:
                continue
            changed += 1
    return changed


# ---------------------------------------------------------------------------------------------
# 2. Regional compilation
# ---------------------------------------------------------------------------------------------


def compile_layers(
    model: FusionModel,
    *,
    backend: Any = "inductor",
    mode: str | None = None,
    fullgraph: bool = False,
) -> FusionModel:
    """Compile `fusion_layer` (one video block + one audio block) with `dynamic=False`.

    Every layer runs the same code on same-shaped weights, so one graph serves all of them
    (the weights are graph inputs); a new latent size compiles once more, a repeated one hits
    the cache. Inductor also keeps compiled kernels on disk (its FX graph cache), so a restarted
    server compiles faster. Its two halves (`fusion_layer_self`, `fusion_layer_cross`) are
    compiled too, for the first layer when `share_first_layer` splits it (two more graphs).
    """
    model.layer_fn, *halves = (
        torch.compile(fn, backend=backend, mode=mode, fullgraph=fullgraph, dynamic=False)
        for fn in (fusion_layer, fusion_layer_self, fusion_layer_cross)
    )
    model.layer_halves = (halves[0], halves[1])  # the first layer, when its half is shared
    return model


def uncompile_layers(model: FusionModel) -> FusionModel:
    model.layer_fn = fusion_layer
    model.layer_halves = (fusion_layer_self, fusion_layer_cross)
    return model


# ---------------------------------------------------------------------------------------------
# 3. Reference-style path (the benchmark's baseline)
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def reference_style(model: FusionModel) -> Iterator[FusionModel]:
    """Run `model` as the official release does, for a fair in-process comparison: separate
    q/k/v projections, the official attention (FA3 where importable, else FlashAttention-2 as
    SDPA's flash backend; plain SDPA off CUDA), the time MLPs on every token, eager (no
    compiled layers), nothing cached across steps. The caller runs the two CFG passes one after
    the other. Restores everything on exit. (Its norms and RoPE keep our fp32 islands: the
    official bf16 casts change rounding, not the work.)"""
    if any(isinstance(m, Fp8Linear) for m in model.modules()):
        raise ValueError("reference_style needs the bf16 weights: call disable_fp8 first")
    was_fused = projections_fused(model)
    gelu_fused = fuse_gelu(model, enable=False) > 0
    saved = (model.layer_fn, model.time_per_token, attn.forced_backend(), model.clip_cache)
    saved_more = (model.layer_halves, model.share_first_layer, attn.shape_backends())
    saved_preference = attn.cuda_sdpa_preference()
    unfuse_projections(model)
    model.layer_fn, model.time_per_token, model.clip_cache = fusion_layer, True, None
    model.layer_halves, model.share_first_layer = (fusion_layer_self, fusion_layer_cross), False
    attn.set_shape_backends(None)
    device = next(model.parameters()).device
    if device.type == "cuda" and attn.fa3_available():
        attn.force_backend("fa3")  # the official release's attention on Hopper
    elif device.type == "cuda":  # else FlashAttention-2, as SDPA's flash backend runs it
        from torch.nn.attention import SDPBackend

        attn.set_cuda_sdpa_preference([SDPBackend.FLASH_ATTENTION])
        attn.force_backend("sdpa-cuda")
    else:
        attn.force_backend("sdpa")
    try:
        yield model
    finally:
        model.layer_fn, model.time_per_token, model.clip_cache = saved[0], saved[1], saved[3]
        model.layer_halves, model.share_first_layer = saved_more[0], saved_more[1]
        attn.set_shape_backends(saved_more[2])
        attn.force_backend(saved[2])
        attn.set_cuda_sdpa_preference(saved_preference)
        if was_fused:
            fuse_projections(model)
        if gelu_fused:
            fuse_gelu(model)


# ---------------------------------------------------------------------------------------------
# 4. Video VAE without fp32 round trips
# ---------------------------------------------------------------------------------------------


def _wan_vae_classes() -> tuple[type[nn.Module], type[nn.Module]]:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm, WanUpsample

    return WanRMS_norm, WanUpsample


def _no_upcast_classes() -> tuple[type[nn.Module], type[nn.Module]]:
    rms_norm, upsample = _wan_vae_classes()

    class NoUpcastUpsample(upsample):  # type: ignore[misc, valid-type]
        """Nearest(-exact) upsampling only copies values: exact in bf16, no fp32 round trip."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.Upsample.forward(self, x)

    class NoUpcastRMSNorm(rms_norm):  # type: ignore[misc, valid-type]
        """F.normalize in the input dtype (reductions still accumulate in fp32 on CUDA)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            normalized = F.normalize(x, dim=1 if self.channel_first else -1)
            return normalized * self.scale * self.gamma + self.bias

    return NoUpcastRMSNorm, NoUpcastUpsample


_NO_UPCAST: tuple[type[nn.Module], type[nn.Module]] | None = None


def vae_skip_upcasts(video_vae: nn.Module, enable: bool = True) -> int:
    """Swap the Wan VAE's upsamplers and RMS norms for versions without the fp32 round trip
    (same parameters, same state dict); `enable=False` swaps them back. Returns how many modules
    changed. The upsampling swap is exact; the norm swap differs by bf16 rounding (the bench
    reports the pixel error). Nearest modes only: any other upsampling mode is left alone."""
    global _NO_UPCAST
    if _NO_UPCAST is None:
        _NO_UPCAST = _no_upcast_classes()
    rms_norm, upsample = _wan_vae_classes()
    fast_norm, fast_up = _NO_UPCAST
    changed = 0
    for module in video_vae.modules():
        cls = type(module)
        if enable and cls is upsample and module.mode in ("nearest", "nearest-exact"):
            module.__class__ = fast_up
        elif enable and cls is rms_norm:
            module.__class__ = fast_norm
        elif not enable and cls in (fast_up, fast_norm):
            module.__class__ = upsample if cls is fast_up else rms_norm
        else:
            continue
        changed += 1
    return changed


# ---------------------------------------------------------------------------------------------
# 5. Attention startup check
# ---------------------------------------------------------------------------------------------

_ATTENTION_TOLERANCE = 2e-2  # bf16 attention vs a float64 reference lands near 4e-3
# what SDPA says when a pinned backend does not take the inputs (not a failure of the backend)
_NO_KERNEL_MESSAGES = ("no available kernel", "no viable backend")


def check_attention_backends(
    device: torch.device | str, dtype: torch.dtype = torch.bfloat16, head_dim: int = 128
) -> dict[str, dict[str, float | str]]:
    """Run every CUDA SDPA backend (and FA3 when importable) on Ovi-like shapes against a
    float64 reference. A backend that errors or disagrees (rel error >= 2e-2) on a shape it
    accepts is dropped from the preference list; "no kernel for these inputs" only means SDPA
    will pass that shape to the next backend. Returns {backend: {shape: rel error or text}}.
    Nothing to check on CPU (returns {})."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    from torch.nn.attention import SDPBackend

    report, keep = probe_attention_backends(device, dtype, head_dim)
    attn.set_cuda_sdpa_preference(keep or [SDPBackend.MATH])
    if "FA3" in report and "FA3" not in keep:
        attn.force_backend("sdpa-cuda")
    logger.info("attention backends checked: %s", report)
    return report


def probe_attention_backends(
    device: torch.device, dtype: torch.dtype, head_dim: int
) -> tuple[dict[str, dict[str, float | str]], list[Any]]:
    """The measurements behind `check_attention_backends`, on any device, changing nothing:
    (report, backends that passed, best first; "FA3" among them when it ran and passed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device=device).manual_seed(0)
    cases = {}
    for lq, lk in ((256, 256), (157, 512), (160, 300)):  # self, text, fusion (odd sizes)
        q, k, v = (
            torch.randn(1, n, 2, head_dim, generator=gen, device=device) for n in (lq, lk, lk)
        )
        ref = F.scaled_dot_product_attention(*(x.transpose(1, 2).double() for x in (q, k, v)))
        cases[f"{lq}x{lk}"] = ((q.to(dtype), k.to(dtype), v.to(dtype)), ref.transpose(1, 2))

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(
            1, 2
        )

    def probe(fn: Any) -> tuple[dict[str, float | str], bool]:
        results: dict[str, float | str] = {}
        good, accepted = True, 0
        for name, (qkv, ref) in cases.items():
            try:
                err = _rel(fn(*qkv).double(), ref)
            except RuntimeError as error:
                text = str(error).splitlines()[0][:160]
                unsupported = any(m in text.lower() for m in _NO_KERNEL_MESSAGES)
                results[name] = ("unsupported: " if unsupported else "error: ") + text
                good = good and unsupported
                continue
            results[name], accepted = err, accepted + 1
            good = good and err < _ATTENTION_TOLERANCE
        return results, good and accepted > 0

    report: dict[str, dict[str, float | str]] = {}
    keep = []
    for backend in attn.DEFAULT_CUDA_SDPA_PREFERENCE:
        if backend == SDPBackend.MATH:
            continue

        def one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: Any = backend) -> Any:
            with sdpa_kernel([b]):
                return sdpa(q, k, v)

        report[backend.name], ok = probe(one)
        if ok:
            keep.append(backend)
    if device.type == "cuda" and attn.attention_backend(device, dtype, head_dim) == "fa3":
        try:
            report["FA3"], ok = probe(attn.attention)
        except Exception as error:  # noqa: BLE001 - any FA3 failure means: do not use it
            report["FA3"], ok = {"all": f"error: {str(error).splitlines()[0][:160]}"}, False
        if ok:
            keep.append("FA3")
    return report, keep


def clip_attention_shapes(
    model: FusionModel, video_tokens: int, audio_tokens: int
) -> list[attn.ShapeKey]:
    """The attention shapes of one forward (keys of `attn.set_shape_backends`): per tower its
    self-attention, its text attention and its fusion attention to the other tower."""
    v, a, dtype = model.config.video, model.config.audio, model.dtype
    d = v.head_dim
    return [
        (video_tokens, video_tokens, v.num_heads, d, dtype),
        (audio_tokens, audio_tokens, a.num_heads, d, dtype),
        (video_tokens, v.text_len, v.num_heads, d, dtype),
        (audio_tokens, a.text_len, a.num_heads, d, dtype),
        (video_tokens, audio_tokens, v.num_heads, d, dtype),
        (audio_tokens, video_tokens, a.num_heads, d, dtype),
    ]


def attention_candidates(
    device: torch.device | str, dtype: torch.dtype, head_dim: int
) -> list[str]:
    """The backends a per-shape choice may pick: those the startup check kept (the CUDA SDPA
    preference list, whose math fallback is always there but never timed unless alone) and FA3
    where `attention` would use it. Never one the check dropped."""
    kept = [b.name for b in attn.cuda_sdpa_preference()]
    names = [n for n in kept if n != "MATH"] or kept
    if attn.attention_backend(device, dtype, head_dim) == "fa3":
        names.insert(0, "FA3")
    return names


TimeFn = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], float]


def _time_backend(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """Milliseconds of one call of backend `name` (median of 3 after one warm-up)."""
    attn.run_backend(name, q, k, v)
    times = []
    for _ in range(3):
        if q.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            attn.run_backend(name, q, k, v)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            attn.run_backend(name, q, k, v)
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def choose_attention_backends(
    shapes: list[attn.ShapeKey],
    device: torch.device | str,
    candidates: list[str] | None = None,
    time_fn: TimeFn | None = None,
) -> dict[attn.ShapeKey, dict[str, float | str]]:
    """Time every candidate backend (default `attention_candidates`) on random q/k/v of each
    shape not chosen yet and pin the fastest per shape (`attn.set_shape_backends`, added to the
    shapes already there). A candidate that fails on a shape is not chosen for it; a shape no
    candidate runs is left to the automatic choice. Returns {shape: {backend: ms or error}}.
    Runs outside any compiled region (before the first step of a clip): the table is read when
    the compiled layers trace `attention`."""
    device = torch.device(device)
    table = attn.shape_backends()
    timings: dict[attn.ShapeKey, dict[str, float | str]] = {}
    gen = torch.Generator(device=device).manual_seed(0)
    for key in shapes:
        if key in table:
            continue
        lq, lk, heads, head_dim, dtype = key
        names = (
            candidates if candidates is not None else attention_candidates(device, dtype, head_dim)
        )
        q, k, v = (
            torch.randn(1, n, heads, head_dim, generator=gen, device=device).to(dtype)
            for n in (lq, lk, lk)
        )
        timings[key] = {}
        for name in names:
            try:
                timings[key][name] = (time_fn or _time_backend)(name, q, k, v)
            except (RuntimeError, ValueError) as error:
                timings[key][name] = f"error: {str(error).splitlines()[0][:160]}"
        ok = [(ms, name) for name, ms in timings[key].items() if isinstance(ms, float)]
        if ok:
            table[key] = min(ok)[1]
    attn.set_shape_backends(table)
    logger.info("attention backends per shape: %s", table)
    return timings


def choose_clip_attention(model: FusionModel, video: torch.Tensor, audio: torch.Tensor) -> None:
    """`choose_attention_backends` for the shapes of a clip with these latents (video
    [B, C, F, H, W], audio [B, La, Ca]), on the model's device; shapes chosen before are kept."""
    pt, ph, pw = model.config.video.patch_size
    _, _, f, h, w = video.shape
    shapes = clip_attention_shapes(model, (f // pt) * (h // ph) * (w // pw), audio.shape[1])
    choose_attention_backends(shapes, video.device)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))


# ---------------------------------------------------------------------------------------------
# 6. Entry points
# ---------------------------------------------------------------------------------------------


def optimize_fusion(
    model: FusionModel, config: FastPath | None = None, device: torch.device | str | None = None
) -> FusionModel:
    """Apply `config` (default `FastPath()`) to a loaded fusion model, in place; idempotent.

    With `block_offload`, `device` is where the layers compute (the model may sit on the CPU)."""
    config = config or FastPath()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if config.fuse_projections:
        fuse_projections(model)
    if config.clip_cache and model.clip_cache is None:
        model.clip_cache = ClipCache()
    if model.clip_cache is not None:
        model.clip_cache.fp32_weights = config.clip_cache and config.cache_fp32_weights
    model.share_first_layer = config.share_first_layer
    if config.fused_gelu:
        fuse_gelu(model)
    if config.fp8 and not any(isinstance(m, Fp8Linear) for m in model.modules()):
        enable_fp8(model)
    if config.block_offload and model.offload is None:
        enable_block_offload(model, device)  # after fp8: it streams the quantised weights
    if config.check_attention:
        check_attention_backends(device, model.dtype, model.config.video.head_dim)
    compile_on = device.type == "cuda" if config.compile is None else config.compile
    if compile_on and model.layer_fn is fusion_layer:
        compile_layers(model, backend=config.compile_backend, mode=config.compile_mode)
    return model


def optimize_pipeline(pipe: OviPipeline, config: FastPath | None) -> FastPath | None:
    """Apply a plan to a built pipeline; returns it with `compile` decided (None: plain path)."""
    if config is None:
        return None
    if config.compile is None:
        config = replace(config, compile=pipe.device.type == "cuda")
    optimize_fusion(pipe.fusion, config, pipe.device)
    vae_dtype = pipe.video_vae.dtype  # its compute dtype: float32 unless `fast_vae`
    if config.vae_skip_upcasts and vae_dtype in (torch.bfloat16, torch.float16):
        vae_skip_upcasts(pipe.video_vae)
    if config.vae_channels_last and not pipe.video_vae.channels_last:
        pipe.video_vae.use_channels_last()
    if config.vae_compile and config.compile:
        pipe.video_vae.compile_decoder(backend=config.compile_backend, mode=config.compile_mode)
    return config
