"""The fast path: transforms applied to a loaded `FusionModel` (and pipeline) after loading.

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
| `vae_skip_upcasts`               | Wan VAE: no fp32 round trip in nearest upsampling     | on for bf16     |
|                                  | (exact) and in the RMS norms (bf16 rounding)          |                 |
| `BlockOffload`                   | layer weights in pinned host memory, streamed into    | opt-in          |
| (`FastPath.block_offload`)       | two device slots one layer ahead (side stream)        |                 |
| `enable_fp8` (`FastPath.fp8`)    | block linears as float8 e4m3 `torch._scaled_mm`,      | opt-in, CUDA    |
|                                  | per-tensor scales                                     |                 |
| `check_attention_backends`       | startup check of the CUDA SDPA backends (and FA3)     | CUDA on         |

Order: fuse, then fp8 (it quantises the fused linears), then offload (it streams whatever
parameters the blocks hold), then compile. `reference_style(model)` temporarily undoes the
transforms for the benchmark's comparison path.

The pipeline's `batch_cfg` / `block_offload` / `fp8_compute` keywords switch the matching
`FastPath` fields on; where no fast path is on (CPU by default, or `fast_path=False`) they go on
top of `PLAIN_PATH`, which transforms nothing else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .modules import attention as attn
from .modules.fusion import FusableProjections, FusionModel, fusion_layer

if TYPE_CHECKING:
    from .pipeline import OviPipeline

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALED_MM_ALIGN = 16  # torch._scaled_mm wants every GEMM dimension a multiple of 16 on CUDA


@dataclass(frozen=True)
class FastPath:
    """Which transforms `optimize_fusion` / `optimize_pipeline` apply (see the module table)."""

    fuse_projections: bool = True
    compile: bool | None = None  # None: on when the model is on CUDA
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    batch_cfg: bool = False
    vae_skip_upcasts: bool = True  # only acts on a bf16/fp16 VAE
    fp8: bool = False  # fp8 compute (CUDA only through the pipeline)
    block_offload: bool = False
    check_attention: bool = True


# No transform: the base that the pipeline's memory/batching keywords go on when the fast path
# is off (e.g. on CPU, where the plain float32 path is the one conformance checks).
PLAIN_PATH = FastPath(
    fuse_projections=False, compile=False, vae_skip_upcasts=False, check_attention=False
)


def resolve_fast_path(
    fast_path: bool | FastPath | None,
    device: torch.device | str,
    *,
    batch_cfg: bool = False,
    block_offload: bool = False,
    fp8_compute: bool = False,
) -> FastPath | None:
    """None: the fast path on CUDA, none on CPU (CPU stays the plain path conformance checks).

    `batch_cfg`, `block_offload`, `fp8_compute`: switch those on, on top of the resolved config
    (or of `PLAIN_PATH` where it is None). fp8 compute on a non-CUDA device is a ValueError.
    """
    device = torch.device(device)
    if isinstance(fast_path, FastPath):
        config: FastPath | None = fast_path
    else:
        on = device.type == "cuda" if fast_path is None else fast_path
        config = FastPath() if on else None
    modes = {"batch_cfg": batch_cfg, "block_offload": block_offload, "fp8": fp8_compute}
    if any(modes.values()):
        config = replace(config or PLAIN_PATH, **{k: True for k, v in modes.items() if v})
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
    server compiles faster.
    """
    model.layer_fn = torch.compile(
        fusion_layer, backend=backend, mode=mode, fullgraph=fullgraph, dynamic=False
    )
    return model


def uncompile_layers(model: FusionModel) -> FusionModel:
    model.layer_fn = fusion_layer
    return model


# ---------------------------------------------------------------------------------------------
# 3. Reference-style path (the benchmark's baseline)
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def reference_style(model: FusionModel) -> Iterator[FusionModel]:
    """Run `model` as the official release does, for a fair in-process comparison: separate
    q/k/v projections, plain SDPA, the time MLPs on every token, eager (no compiled layers).
    The caller runs the two CFG passes one after the other. Restores everything on exit."""
    if any(isinstance(m, Fp8Linear) for m in model.modules()):
        raise ValueError("reference_style needs the bf16 weights: call disable_fp8 first")
    was_fused = projections_fused(model)
    saved = (model.layer_fn, model.time_per_token, attn.forced_backend())
    unfuse_projections(model)
    model.layer_fn, model.time_per_token = fusion_layer, True
    attn.force_backend("sdpa")
    try:
        yield model
    finally:
        model.layer_fn, model.time_per_token = saved[0], saved[1]
        attn.force_backend(saved[2])
        if was_fused:
            fuse_projections(model)


# ---------------------------------------------------------------------------------------------
# 4. fp8 compute (opt-in)
# ---------------------------------------------------------------------------------------------


def _fp8_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor scale, float32 0-dim, on x's device (no host sync): amax / 448."""
    return (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12)


def _to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # in x's dtype (a 0-dim fp32 scale does not promote): a bf16 activation gets no fp32 copy,
    # which would be 3.4 GB for the FFN's hidden rows at 704x704x121 (bench/memory.py)
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


class Fp8Linear(nn.Module):
    """`nn.Linear` computed as float8 e4m3 x float8 e4m3 -> compute dtype (`torch._scaled_mm`).

    Weight: quantised once with a per-tensor scale. Activations: quantised per call with a
    per-tensor scale computed on the device. The bias is added in the GEMM epilogue.
    `original` keeps the bf16 module when asked (`disable_fp8` restores it).
    """

    def __init__(self, linear: nn.Linear, keep_original: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach()  # [out, in]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = weight.dtype
        scale = _fp8_scale(weight)
        self.weight = nn.Parameter(_to_fp8(weight, scale), requires_grad=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.original = [linear] if keep_original else []  # a list: not a registered submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out] in the compute dtype."""
        rows = x.reshape(-1, self.in_features)  # [M, in]
        m = rows.shape[0]
        pad = -m % SCALED_MM_ALIGN
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))  # zero rows: no effect on the scale
        scale = _fp8_scale(rows)
        out = torch._scaled_mm(
            _to_fp8(rows, scale),
            self.weight.t(),  # [in, out], column-major as _scaled_mm wants
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=self.out_dtype,
        )
        return out[:m].reshape(*x.shape[:-1], self.out_features)


def _block_linears(model: FusionModel) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    for tower in (model.video_model, model.audio_model):
        for block in tower.blocks:
            for parent in block.modules():
                for name, child in parent.named_children():
                    if isinstance(child, nn.Linear | Fp8Linear):
                        yield parent, name, child


def enable_fp8(model: FusionModel, keep_original: bool = False) -> FusionModel:
    """Every linear inside the blocks (attention, fusion, FFN) -> `Fp8Linear`. Embeddings, time
    MLPs and heads stay in the compute dtype. Halves the block weight memory unless
    `keep_original` (which keeps the bf16 modules for `disable_fp8`)."""
    for parent, name, child in list(_block_linears(model)):
        if isinstance(child, nn.Linear):
            setattr(parent, name, Fp8Linear(child, keep_original))
    return model


def disable_fp8(model: FusionModel) -> FusionModel:
    for parent, name, child in list(_block_linears(model)):
        if isinstance(child, Fp8Linear):
            if not child.original:
                raise ValueError("fp8 was enabled without keep_original: reload the weights")
            setattr(parent, name, child.original[0])
    return model


# ---------------------------------------------------------------------------------------------
# 5. Block-level offload with prefetch
# ---------------------------------------------------------------------------------------------

_ALIGN_BYTES = 256


def _layout(params: list[nn.Parameter]) -> tuple[list[int], int]:
    """Byte offsets of each parameter in one flat buffer (256-byte aligned), and its size."""
    offsets, size = [], 0
    for p in params:
        offsets.append(size)
        size += -(-p.numel() * p.element_size() // _ALIGN_BYTES) * _ALIGN_BYTES
    return offsets, size


def _views(
    flat: torch.Tensor, params: list[nn.Parameter], offsets: list[int]
) -> list[torch.Tensor]:
    """Views of a flat uint8 buffer shaped and typed like `params`."""
    return [
        flat[o : o + p.numel() * p.element_size()].view(p.dtype).view(p.shape)
        for p, o in zip(params, offsets, strict=True)
    ]


class BlockOffload:
    """Keep the fusion layers' weights in host memory and stream them to the device per layer.

    Each layer (video block i + audio block i) lives in one flat host buffer (pinned on CUDA),
    and two flat device slots hold the layer computing now and the next one: while layer i
    computes on the current stream, a side stream copies layer i+1 into the other slot. After
    layer i the parameters point back at the host copy, so `state_dict()` between forwards
    reads valid (host) tensors. Everything outside the blocks (embeddings, heads) moves to the
    device. On a CPU "device" there is no side stream: the copies are plain synchronous ones,
    so the bookkeeping can be tested there for exact equality.

    Device memory for the weights: the non-block weights plus two layers (full Ovi, bf16:
    ~1.5 GB + 2 x ~0.73 GB) instead of ~23 GB.
    """

    def __init__(self, model: FusionModel, device: torch.device | str) -> None:
        self.model = model
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        pairs = zip(model.video_model.blocks, model.audio_model.blocks, strict=True)
        self.params = [list(vb.parameters()) + list(ab.parameters()) for vb, ab in pairs]
        signature = [(p.shape, p.dtype) for p in self.params[0]]
        if any([(p.shape, p.dtype) for p in ps] != signature for ps in self.params):
            raise ValueError("block offload needs every layer to hold the same parameter layout")
        self.offsets, self.layer_bytes = _layout(self.params[0])
        block_ids = {id(p) for ps in self.params for p in ps}
        # 1. everything outside the blocks (and all buffers, e.g. fp8 scales) to the device
        for module in model.modules():
            for p in module.parameters(recurse=False):
                if id(p) not in block_ids:
                    p.data = p.data.to(self.device)
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.to(self.device)
        # 2. layer weights -> flat host buffers (the device copies are freed as we go)
        self.host_flat: list[torch.Tensor] = []
        self.host: list[list[torch.Tensor]] = []
        self.registered: list[bool] = []  # page-locked with cudaHostRegister (to unregister)
        for ps in self.params:
            flat, registered = torch.empty(self.layer_bytes, dtype=torch.uint8), False
            if self.cuda:
                flat, registered = _pin(flat)
            views = _views(flat, ps, self.offsets)
            for p, view in zip(ps, views, strict=True):
                view.copy_(p.data)
                p.data = view
            self.host_flat.append(flat)
            self.host.append(views)
            self.registered.append(registered)
        # 3. two device slots and the copy stream
        self.slot_flat = [
            torch.empty(self.layer_bytes, dtype=torch.uint8, device=self.device) for _ in range(2)
        ]
        self.slots = [_views(flat, self.params[0], self.offsets) for flat in self.slot_flat]
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.order: list[int] = []
        self.position: dict[int, int] = {}
        self.ready: dict[int, torch.cuda.Event | None] = {}  # layer -> copy-done event
        model.offload = self

    # --- the LayerWeights protocol (called by FusionModel._forward) -------------------------

    def begin(self, layers: list[int]) -> None:
        self.order = list(layers)
        self.position = {layer: k for k, layer in enumerate(self.order)}
        self.ready = {}
        if self.order:
            self._copy(self.order[0])

    def fetch(self, i: int) -> None:
        if i not in self.ready:  # not prefetched (e.g. called out of order): copy now
            self._copy(i)
        event = self.ready.pop(i)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        slot = self.slots[self.position[i] % 2]
        for p, dev in zip(self.params[i], slot, strict=True):
            p.data = dev
        k = self.position[i] + 1
        if k < len(self.order):  # prefetch the next layer into the other slot
            self._copy(self.order[k])

    def release(self, i: int) -> None:
        for p, host in zip(self.params[i], self.host[i], strict=True):
            p.data = host

    # --- internals ------------------------------------------------------------------------

    def _copy(self, i: int) -> None:
        dst = self.slot_flat[self.position[i] % 2]
        if self.stream is None:
            dst.copy_(self.host_flat[i])
            self.ready[i] = None
            return
        # the slot was last read by the layer two before; that compute is already queued
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            dst.copy_(self.host_flat[i], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[i] = event

    def disable(self) -> FusionModel:
        """Put every layer's weights back on the device (needs the memory) and detach."""
        if self.stream is not None:
            self.stream.synchronize()
        for ps, hosts in zip(self.params, self.host, strict=True):
            for p, host in zip(ps, hosts, strict=True):
                p.data = host.to(self.device, copy=True)
        for flat, registered in zip(self.host_flat, self.registered, strict=True):
            if registered:
                torch.cuda.cudart().cudaHostUnregister(flat.data_ptr())
        self.host_flat, self.host, self.slot_flat, self.slots = [], [], [], []
        self.model.offload = None
        return self.model


def _pin(flat: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Page-lock a host buffer in place with cudaHostRegister (no power-of-two rounding, unlike
    the caching pinned allocator), else fall back to a pinned copy. -> (buffer, registered)."""
    try:
        if int(torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), flat.numel(), 0)) == 0:
            return flat, True
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the build
        pass
    return flat.pin_memory(), False  # pragma: no cover


def enable_block_offload(model: FusionModel, device: torch.device | str) -> BlockOffload:
    """Stream the layers' weights from host memory (see `BlockOffload`); `.disable()` undoes."""
    if model.offload is not None:
        raise ValueError("block offload is already enabled on this model")
    return BlockOffload(model, device)


# ---------------------------------------------------------------------------------------------
# 6. Video VAE without fp32 round trips
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
# 7. Attention startup check
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


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))


# ---------------------------------------------------------------------------------------------
# 8. Entry points
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


def optimize_pipeline(
    pipe: OviPipeline, fast_path: bool | FastPath | None = None
) -> FastPath | None:
    """Apply the fast path to a built pipeline; returns the resolved config (None: plain path)."""
    config = resolve_fast_path(fast_path, pipe.device)
    if config is None:
        return None
    if config.compile is None:
        config = replace(config, compile=pipe.device.type == "cuda")
    optimize_fusion(pipe.fusion, config, pipe.device)
    if config.vae_skip_upcasts and pipe.dtype in (torch.bfloat16, torch.float16):
        vae_skip_upcasts(pipe.video_vae)
    return config
