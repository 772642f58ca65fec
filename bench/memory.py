"""Peak GPU memory of full-size Ovi, estimated without a GPU (`python -m bench`, section memory).

The real code paths run on the `meta` device: every op computes shapes and dtypes, none touches
data, so a 704x704x121 step costs seconds and no memory. `LiveBytes` counts the bytes of the
tensor storages alive at each moment: the weights exactly, the activations as the largest sum of
tensors alive at once. Attention is counted as a flash-style kernel (output + log-sum-exp), as
cuDNN, flash SDPA and FA3 run it on a GPU; on `meta` SDPA would otherwise count the L x L score
matrix of its math fallback.

Not counted, so the figures are a floor under `torch.cuda.max_memory_allocated`: the caching
allocator's rounding and fragmentation, and kernel workspaces (cuBLAS, cuDNN). The CUDA context
(~0.5 GiB) is outside `max_memory_allocated` anyway. A GPU run of `python -m bench` records both
the measured peaks and these estimates, so the gap can be read off one JSON.

Running at full size on `meta` also proves that the fast path, batched CFG, fp8 `_scaled_mm`
(whose meta kernel checks the CUDA alignment rules) and the VAEs accept the full-size shapes.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary
from transformers import UMT5EncoderModel

from model import optimize as opt
from model.config import OviConfig
from model.convert.umt5 import umt5_config
from model.modules.audio_vae import AudioVAE
from model.modules.fusion import FusionModel
from model.modules.video_vae import VideoVAE
from model.modules.vocoder import Vocoder

from .build import _materialise
from .flops import Shape

META = torch.device("meta")
GIB = 2**30
COMPONENTS = ("fusion", "text_encoder", "video_vae", "audio_vae", "vocoder")


class LiveBytes(TorchDispatchMode):
    """Bytes of the `meta` storages alive, and the peak since `measure` began.

    Each storage is counted once (views share it) from the op that creates it until Python frees
    it. Tensors made before the mode (weights) are added with `track`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def track(self, tensors: Any) -> None:
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                storage = t.untyped_storage()
                if storage not in self._seen:
                    size = storage.nbytes()
                    self._seen[storage] = size
                    self.current += size
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        self.track(out)
        return out

    def measure(self, fn: Callable[[], Any]) -> tuple[int, Any]:
        """(peak bytes above what was alive before `fn`, fn's result); the result stays alive."""
        base = self.peak = self.current
        with self:
            out = fn()
        return self.peak - base, out


def tensors_of(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's distinct parameter and buffer storages."""
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors_of(module)}
    return sum(storages.values())


_SDPA = F.scaled_dot_product_attention


def _flash_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, **kw: Any,
) -> torch.Tensor:  # fmt: skip
    """SDPA as the flash kernel's meta function allocates: [B, H, Lq, D] + an fp32 LSE."""
    if attn_mask is not None or query.device.type != "meta":
        return _SDPA(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=scale, **kw,
        )  # fmt: skip
    return torch.ops.aten._scaled_dot_product_flash_attention(
        query, key, value, dropout_p, is_causal, scale=scale
    )[0]


@contextlib.contextmanager
def flash_attention_on_meta() -> Iterator[None]:
    """Route `F.scaled_dot_product_attention` (ours and diffusers') through the flash meta
    kernel, so attention is counted at its GPU size."""
    F.scaled_dot_product_attention = _flash_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA


# ---------------------------------------------------------------------------------------------
# full-size components on meta (the classes the loaders fill; no weights read)
# ---------------------------------------------------------------------------------------------


STEP_LAYERS = 3  # depth of the DiT a step's activations are measured on (see estimate_memory)


def shallow(config: OviConfig, layers: int = STEP_LAYERS) -> OviConfig:
    """`config` with a `layers`-deep DiT (same widths, same everything else)."""
    fusion = config.fusion
    return replace(
        config,
        fusion=replace(
            fusion,
            video=replace(fusion.video, num_layers=layers),
            audio=replace(fusion.audio, num_layers=layers),
        ),
    )


def meta_components(
    config: OviConfig, dtype: torch.dtype = torch.bfloat16, parts: tuple[str, ...] = COMPONENTS
) -> dict[str, Any]:
    """The five components (or `parts` of them) at full size on `meta` (the audio ones in
    float32, as the pipeline runs them); the DiT with the CUDA fast path's fused projections
    (compilation aside: it changes kernels, not which tensors are alive)."""
    builders: dict[str, Callable[[], nn.Module]] = {
        "fusion": lambda: FusionModel(config.fusion),
        "text_encoder": lambda: UMT5EncoderModel(umt5_config(config.t5)),
        "video_vae": lambda: VideoVAE(config.video_vae),
        "audio_vae": lambda: AudioVAE(config.audio_vae),
        "vocoder": lambda: Vocoder(config.vocoder),
    }
    with META:
        built = {name: builders[name]() for name in parts}
    for name, module in built.items():
        _materialise(module, META, torch.float32 if name in ("audio_vae", "vocoder") else dtype)
    if "fusion" in built:
        plan = opt.FastPath(compile=False, check_attention=False)
        opt.optimize_fusion(built["fusion"], plan, META)
    if "text_encoder" in built:
        t5 = built["text_encoder"]
        t5.encoder.set_input_embeddings(t5.shared)  # one token table, as the loader ties it
    if "video_vae" in built:
        built["video_vae"].reset_latent_stats()  # float32 constants, as the loader leaves them
    return built


# ---------------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------------


def estimate_memory(
    config: OviConfig,
    shapes: dict[str, Shape],
    main: str,
    num_prompts: int,
    guidance: tuple[float, float],
    slg_layer: int,
) -> dict[str, float]:
    """Figures in GiB: weights per component, the activation peak of each phase
    (one step per shape: both CFG passes + guidance; T5 on `num_prompts` prompts; VAE encode/decode at
    `main`; audio decode), and the pipeline's peak in each memory mode."""
    parts = meta_components(config)
    fusion: FusionModel = parts["fusion"]
    # A step's activations are measured on a DiT of the same widths with STEP_LAYERS layers:
    # every layer has the same shapes and frees its intermediates before the next, so the peak
    # does not depend on the depth (`tests/bench/test_memory.py` checks it; the full 30 layers
    # gave the same figures to every digit), and dispatching 30 layers on meta costs ~10x.
    dit = meta_components(shallow(config), parts=("fusion",))["fusion"]
    slg = None if slg_layer is None or slg_layer <= 0 else STEP_LAYERS // 2
    tracker = LiveBytes()
    for module in (*parts.values(), dit):
        tracker.track(tensors_of(module))  # so views of weights are not counted as activations
    est = {f"est_weights_{name}_gib": module_bytes(parts[name]) / GIB for name in COMPONENTS}
    v_cfg = config.fusion.video
    gv, ga = guidance

    def step_inputs(shape: Shape) -> dict[str, torch.Tensor]:
        def text(rows: int) -> torch.Tensor:
            return torch.empty(1, rows, v_cfg.text_dim, device=META, dtype=torch.bfloat16)

        return dict(
            video=torch.empty(1, v_cfg.in_dim, shape.latent_frames, shape.height // 16,
                              shape.width // 16, device=META, dtype=torch.bfloat16),
            audio=torch.empty(1, shape.audio_tokens, config.fusion.audio.in_dim, device=META,
                              dtype=torch.bfloat16),
            t=torch.empty(1, device=META), pos=text(117), vneg=text(14), aneg=text(12),
        )  # fmt: skip

    def step(shape: Shape, batch_cfg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = step_inputs(shape)
        if batch_cfg:
            pv, pa, nv, na = dit.forward_cfg(
                x["video"], x["audio"], x["t"], (x["pos"], x["pos"]), (x["vneg"], x["aneg"]),
                slg_layer=slg,
            )  # fmt: skip
        else:
            pv, pa = dit(x["video"], x["audio"], x["t"], x["pos"], x["pos"])
            nv, na = dit(x["video"], x["audio"], x["t"], x["vneg"], x["aneg"], slg_layer=slg)
        return nv + gv * (pv - nv), na + ga * (pa - na)

    def act(key: str, fn: Callable[[], Any]) -> None:
        est[key], _ = tracker.measure(fn)
        est[key] /= GIB

    full_layers = config.fusion.video.num_layers
    kv_bytes: dict[str, int] = {}

    def clip_step(shape: Shape, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A step in a clip scope, as the pipeline runs it: the clip cache holds the text K/V of
        the shallow DiT's layers; `kv_bytes[key]` is what the full depth holds."""
        with dit.clip():
            out = step(shape)
            cache = dit.clip_cache
            kv = (
                [] if cache is None else [v for k, (_, v) in cache._entries.items() if k[0] == "kv"]
            )
            per_layer = sum(t.nbytes for layers in kv for pair in layers if pair for t in pair)
            kv_bytes[key] = per_layer * full_layers // STEP_LAYERS
        return out

    def clip_act(key: str, shape: Shape) -> None:
        """Step activations at full depth: the shallow DiT's peak + the K/V of the layers it
        lacks (alive for the whole step)."""
        act(key, lambda: clip_step(shape, key))
        est[key] += kv_bytes[key] * (1 - STEP_LAYERS / full_layers) / GIB

    with torch.no_grad(), flash_attention_on_meta():
        for label, shape in shapes.items():
            clip_act(f"est_step_{label}_ours_act_gib", shape)
        # without the work kept across the guidance passes: the plan of the modes whose peak is
        # the denoise phase (`resolve_fast_path`: cpu/block offload, fast_vae)
        saved = (dit.share_first_layer, dit.clip_cache and dit.clip_cache.fp32_weights)
        dit.share_first_layer = False
        if dit.clip_cache is not None:
            dit.clip_cache.fp32_weights = False
        clip_act(f"est_step_{main}_unshared_act_gib", shapes[main])
        dit.share_first_layer = saved[0]
        if dit.clip_cache is not None:
            dit.clip_cache.fp32_weights = bool(saved[1])
        est["est_text_kv_cache_gib"] = kv_bytes[f"est_step_{main}_ours_act_gib"] / GIB
        act(f"est_step_{main}_batched_cfg_act_gib", lambda: step(shapes[main], batch_cfg=True))
        with opt.reference_style(dit):
            tracker.track(tensors_of(dit))  # the unfused projections
            act(f"est_step_{main}_reference_act_gib", lambda: step(shapes[main]))
        # fp8 on meta: the _scaled_mm meta kernel checks CUDA's shape and layout rules
        opt.enable_fp8(fusion, keep_original=True)
        est["est_weights_fusion_fp8_gib"] = module_bytes(fusion) / GIB
        opt.disable_fp8(fusion)
        opt.enable_fp8(dit)
        tracker.track(tensors_of(dit))
        clip_act(f"est_step_{main}_fp8_act_gib", shapes[main])
        # every prompt is padded to text_len tokens. No padding mask: transformers reads it on
        # the host (`.all()`), which `meta` cannot; the mask's own bytes are negligible
        ids = torch.zeros(num_prompts, config.t5.text_len, dtype=torch.long, device=META)
        act("est_t5_act_gib", lambda: parts["text_encoder"](input_ids=ids))
        vae: VideoVAE = parts["video_vae"]
        s = shapes[main]
        latent = (1, config.video_vae.z_dim, s.latent_frames, s.height // 16, s.width // 16)
        image = (1, 3, s.height, s.width)

        def z_video() -> torch.Tensor:
            return torch.empty(latent, device=META, dtype=torch.bfloat16)

        vae.tail_frames = None  # diffusers' bf16 decode as shipped (fp32 upcasts, whole chunks)
        act("est_vae_decode_stock_act_gib", lambda: vae.decode(z_video()))
        vae.tail_frames = 1
        # as the pipeline runs it by default: float32 math on the bf16 weights (the official
        # precision), in pieces, 8-bit frames to the host
        vae.compute_in_float32()
        act("est_vae_encode_image_act_gib",
            lambda: vae.encode_image(torch.empty(image, device=META, dtype=torch.bfloat16)))  # fmt: skip
        act("est_vae_decode_act_gib", lambda: vae.decode_uint8(z_video(), device="cpu"))
        vae.compute_in_float32(False)
        opt.vae_skip_upcasts(vae)  # --fast-vae: bf16 math, no fp32 round trips
        act("est_vae_decode_fast_act_gib", lambda: vae.decode_uint8(z_video(), device="cpu"))
        z = torch.empty(1, config.audio_vae.embed_dim, s.audio_tokens, device=META)
        act("est_audio_decode_act_gib", lambda: parts["vocoder"](parts["audio_vae"].decode(z)))
    est.update(_pipeline_peaks(est, fusion, main))
    return est


def _pipeline_peaks(est: dict[str, float], fusion: FusionModel, main: str) -> dict[str, float]:
    """The pipeline's peak at `main` in each memory mode: the largest of its phases, each phase
    being the weights on the device then + the phase's activation peak.

    all resident (the default): every component on the device for the whole request;
    offload_text_encoder: umT5 visits the device for the prompts only; cpu_offload: one
    component at a time; block_offload: the DiT's non-block weights + two layer slots
    (`BlockOffload`) while denoising, the other components one at a time.
    """
    w = {name: est[f"est_weights_{name}_gib"] for name in COMPONENTS}
    phases = {  # phase: (the components it runs, its activation peak)
        "t5": (("text_encoder",), est["est_t5_act_gib"]),
        "denoise": (("fusion",), est[f"est_step_{main}_ours_act_gib"]),
        "vae_decode": (("video_vae",), est["est_vae_decode_act_gib"]),
        "audio_decode": (("audio_vae", "vocoder"), est["est_audio_decode_act_gib"]),
    }
    pairs = zip(fusion.video_model.blocks, fusion.audio_model.blocks, strict=True)
    layers = [(module_bytes(v) + module_bytes(a)) / GIB for v, a in pairs]
    streamed_dit = w["fusion"] - sum(layers) + 2 * max(layers)

    def peak(resident: tuple[str, ...], dit: float | None = None, offload: bool = False) -> float:
        def weights(names: tuple[str, ...]) -> float:
            return sum(dit if n == "fusion" and dit is not None else w[n] for n in set(names))

        acts = {name: act for name, (_, act) in phases.items()}
        if offload:  # the offload modes' plan (no work kept across the guidance passes)
            acts["denoise"] = est[f"est_step_{main}_unshared_act_gib"]
        return max(weights(resident + runs) + acts[name] for name, (runs, _) in phases.items())

    offload_t5 = peak(COMPONENTS[:1] + COMPONENTS[2:])
    return {
        "est_pipeline_peak_gib": peak(COMPONENTS),
        "est_pipeline_peak_text_encoder_offload_gib": offload_t5,
        # the default on a GPU under `SMALL_GPU_GIB` (a 40 GB card) keeps umT5 on the host
        "est_pipeline_peak_default_40gb_gib": offload_t5,
        "est_pipeline_peak_cpu_offload_gib": peak((), offload=True),
        "est_pipeline_peak_block_offload_gib": peak((), dit=streamed_dit, offload=True),
    }
