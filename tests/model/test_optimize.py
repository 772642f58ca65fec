"""model/optimize/: every fast-path transform computes what the plain model computes.

CPU, float32, tiny preset and the reference fusion case: rel_l2 < 1e-5 per transform (fp8, an
approximation by design, has its own looser bound). Block offload is exact (same kernels).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounter
from torch.utils._python_dispatch import TorchDispatchMode

from model import optimize as opt
from model.config import FusionConfig, TowerConfig
from model.convert.fusion import load_fusion, random_fusion_state
from model.convert.wan_vae import load_wan_vae, random_wan_vae_state
from model.loading import read_checkpoint
from model.modules import attention as attn
from model.modules.fusion import FusionModel, fusion_layer
from model.options import RuntimeOptions
from model.pipeline import OviPipeline, denoise
from model.presets import get_preset
from model.sampling import SamplingParams
from tools.conformance import load_case_json

TOL = 1e-5
TINY = get_preset("tiny").config.fusion


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _tiny_model(seed: int = 1) -> FusionModel:
    return load_fusion(random_fusion_state(TINY, seed), TINY, source="random", dtype=torch.float32)


def _inputs(seed: int = 0, batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        video=torch.randn(batch, 48, 5, 4, 6, generator=g),
        audio=torch.randn(batch, 23, 20, generator=g),
        t=torch.full((batch,), 731, dtype=torch.int64),
        video_context=torch.randn(batch, 7, 32, generator=g),
        audio_context=torch.randn(batch, 5, 32, generator=g),
    )


VARIANTS = [
    dict(first_frame_is_clean=False, slg_layer=None),
    dict(first_frame_is_clean=True, slg_layer=1),
]


@pytest.fixture(scope="module")
def base() -> FusionModel:
    return _tiny_model()


@pytest.fixture(scope="module")
def expected(base) -> list[tuple[torch.Tensor, torch.Tensor]]:
    with torch.no_grad():
        return [base(**_inputs(), **variant) for variant in VARIANTS]


def _check(model: FusionModel, expected, tol: float = TOL) -> list[float]:
    errors = []
    with torch.no_grad():
        for variant, (ref_v, ref_a) in zip(VARIANTS, expected, strict=True):
            video, audio = model(**_inputs(), **variant)
            errors += [_rel(video, ref_v), _rel(audio, ref_a)]
    assert max(errors) < tol, errors
    return errors


# --- fused projections ------------------------------------------------------------------------


def test_fused_projections_equal_and_keep_official_keys(base, expected):
    model = _tiny_model()
    keys_before = {k: v.clone() for k, v in model.state_dict().items()}
    opt.fuse_projections(model)
    assert opt.projections_fused(model)
    block = model.video_model.blocks[0]
    assert block.self_attn.qkv.weight.shape == (3 * 64, 64)
    assert block.cross_attn.kv.weight.shape == (2 * 64, 64)
    assert block.cross_attn.kv_fusion.weight.shape == (2 * 64, 64)
    assert not hasattr(block.self_attn, "k_fusion") and not hasattr(block.cross_attn, "k")
    _check(model, expected)
    # the state dict still has exactly the official keys and values
    state = model.state_dict()
    assert set(state) == set(keys_before)
    assert all(torch.equal(state[k], v) for k, v in keys_before.items())
    # and the unfused layout comes back
    opt.unfuse_projections(model)
    assert not opt.projections_fused(model)
    assert set(model.state_dict()) == set(keys_before)
    _check(model, expected)


def test_official_files_load_strictly_into_a_fused_model(expected):
    state = random_fusion_state(TINY, 1)
    model = opt.fuse_projections(_tiny_model(seed=99))  # other weights, then overwrite
    model.load_state_dict(state, strict=True)
    _check(model, expected)
    model = opt.fuse_projections(_tiny_model(seed=99))
    model.load_state_dict(state, strict=True, assign=True)
    _check(model, expected)


def test_reference_case_with_every_exact_transform(reference_dir):
    """The published fusion case (official-format weights, reference outputs) through the fast
    path: fused projections + per-token time off + batched CFG + block offload."""
    case_dir = reference_dir / "fusion"
    case = load_case_json(case_dir)
    config = FusionConfig(
        video=TowerConfig.from_official(case["video_config"]),
        audio=TowerConfig.from_official(case["audio_config"]),
    )
    weights = case_dir / "weights.safetensors"
    model = load_fusion(read_checkpoint(weights), config, source=str(weights), dtype=torch.float32)
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    refs = load_file(str(case_dir / "outputs.safetensors"))
    args = (
        inputs["video_latent"][None],
        inputs["audio_latent"][None],
        inputs["t"],
        inputs["vid_context"][None],
        inputs["audio_context"][None],
    )
    opt.fuse_projections(model)
    offload = opt.enable_block_offload(model, "cpu")
    errors = {}
    with torch.no_grad():
        for name, variant in case["variants"].items():
            kwargs = dict(
                first_frame_is_clean=bool(variant["first_frame_is_clean"]),
                slg_layer=variant["slg_layer"],
            )
            video, audio = model(*args, **kwargs)
            errors[f"{name}.video"] = _rel(video[0], refs[f"{name}.video_pred"])
            errors[f"{name}.audio"] = _rel(audio[0], refs[f"{name}.audio_pred"])
            with opt.reference_style(model):
                video_ref, audio_ref = model(*args, **kwargs)
            errors[f"{name}.video.reference_style"] = _rel(video_ref[0], refs[f"{name}.video_pred"])
            errors[f"{name}.audio.reference_style"] = _rel(audio_ref[0], refs[f"{name}.audio_pred"])
    offload.disable()
    assert max(errors.values()) < TOL, errors
    # batched CFG: "<v>" is the positive pass, "<v>_slg" the negative one (same text here)
    ctx = (args[3], args[4])
    for pos_name in ("t2v", "i2v"):
        variant = case["variants"][f"{pos_name}_slg"]
        with torch.no_grad():
            pos_v, pos_a, neg_v, neg_a = model.forward_cfg(
                *args[:3], ctx, ctx, variant["first_frame_is_clean"], variant["slg_layer"]
            )
        for out, key in (
            (pos_v, f"{pos_name}.video_pred"),
            (pos_a, f"{pos_name}.audio_pred"),
            (neg_v, f"{pos_name}_slg.video_pred"),
            (neg_a, f"{pos_name}_slg.audio_pred"),
        ):
            assert _rel(out[0], refs[key]) < TOL, key


# --- time embedding, reference style ----------------------------------------------------------


def _compiled(expected, **kwargs) -> tuple[FusionModel, CompileCounter]:
    """The tiny model, fused and compiled with a graph counter, checked once (graphs built)."""
    model = opt.fuse_projections(_tiny_model())
    counter = CompileCounter()
    opt.compile_layers(model, backend=counter, **kwargs)
    _check(model, expected)
    return model, counter


def test_time_per_token_equals_time_per_distinct_timestep(expected):
    model, compiled = _compiled(expected)
    graphs = compiled.frame_count
    with opt.reference_style(model):
        assert model.time_per_token and model.layer_fn is fusion_layer
        assert not opt.projections_fused(model) and attn.forced_backend() == "sdpa"
        _check(model, expected)
    assert not model.time_per_token and model.layer_fn is not fusion_layer
    assert opt.projections_fused(model) and attn.forced_backend() is None
    _check(model, expected)  # re-fused modules: the compiled graphs still apply
    assert compiled.frame_count == graphs


# --- regional compile -------------------------------------------------------------------------


def test_compiled_layers_one_graph_for_all_layers_and_no_recompiles(expected):
    model, counter = _compiled(expected, fullgraph=True)  # fullgraph: no graph breaks
    # 3 layers x 2 variants (t2v: U=1; i2v: U=2 with an index) -> 2 graphs, not 6
    first = counter.frame_count
    assert first == 2, first
    for t in (999, 3):  # new requests, same shapes: no recompiles
        x = _inputs(seed=t)
        x["t"] = torch.full((1,), t)
        with torch.no_grad():
            for variant in VARIANTS:
                model(**x, **variant)
    assert counter.frame_count == first


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="an inductor compile of the tiny layer takes ~1 min on a 2-core CPU "
    "(measured once: rel_l2 2.5e-7 video / 4.7e-7 audio); this runs on CUDA",
)
def test_inductor_compiled_layers_equal():  # pragma: no cover - CUDA only
    base = _tiny_model().cuda()
    x = {k: v.cuda() for k, v in _inputs().items()}
    with torch.no_grad():
        ref = base(**x, slg_layer=1)
        opt.compile_layers(opt.fuse_projections(base))
        out = base(**x, slg_layer=1)
    assert _rel(out[0], ref[0]) < 1e-4 and _rel(out[1], ref[1]) < 1e-4


# --- batched CFG ------------------------------------------------------------------------------


@pytest.mark.parametrize("clean, slg", [(False, None), (False, 1), (True, 2)])
def test_forward_cfg_equals_two_passes(base, clean, slg):
    x = _inputs(batch=2)
    g = torch.Generator().manual_seed(5)
    neg = (torch.randn(2, 4, 32, generator=g), torch.randn(2, 9, 32, generator=g))
    with torch.no_grad():
        ref_pos = base(**x, first_frame_is_clean=clean)
        ref_neg = base(x["video"], x["audio"], x["t"], *neg, clean, slg)
        pos_v, pos_a, neg_v, neg_a = base.forward_cfg(
            x["video"],
            x["audio"],
            x["t"],
            (x["video_context"], x["audio_context"]),
            neg,
            clean,
            slg,
        )
    errors = [
        _rel(pos_v, ref_pos[0]),
        _rel(pos_a, ref_pos[1]),
        _rel(neg_v, ref_neg[0]),
        _rel(neg_a, ref_neg[1]),
    ]
    assert max(errors) < TOL, errors


def test_denoise_with_batched_cfg_equals_sequential(base):
    x = _inputs()
    g = torch.Generator().manual_seed(3)
    texts = (
        x["video_context"],
        torch.randn(1, 4, 32, generator=g),
        torch.randn(1, 6, 32, generator=g),
    )
    params = SamplingParams(steps=3, slg_layer=1)
    first = x["video"][:, :, :1] * 0.5
    with torch.no_grad():
        ref = denoise(base, x["video"], x["audio"], *texts, params, first_frame_latent=first)
        out = denoise(
            base, x["video"], x["audio"], *texts, params, first_frame_latent=first, batch_cfg=True
        )
    assert _rel(out[0], ref[0]) < TOL and _rel(out[1], ref[1]) < TOL


# --- host syncs -------------------------------------------------------------------------------


class _SyncOps(TorchDispatchMode):
    """Records the ops that read a device value on the host (a sync on CUDA)."""

    SYNCING = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "item"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCING:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_fusion_forward_has_no_host_syncs(base):
    x = _inputs()
    with torch.no_grad(), _SyncOps() as mode:
        base(**x, first_frame_is_clean=True, slg_layer=1)
        base.forward_cfg(
            x["video"], x["audio"], x["t"], (x["video_context"], x["audio_context"]),
            (x["video_context"], x["audio_context"]), slg_layer=1,
        )  # fmt: skip
    assert mode.seen == []


# --- block offload ----------------------------------------------------------------------------


def test_block_offload_is_exact_and_restores(expected):
    model = opt.fuse_projections(_tiny_model())
    ref = [model(**_inputs(), **v) for v in VARIANTS]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    offload = opt.enable_block_offload(model, "cpu")
    assert model.offload is offload
    with pytest.raises(ValueError, match="already"):
        opt.enable_block_offload(model, "cpu")
    with torch.no_grad():
        for variant, (ref_v, ref_a) in zip(VARIANTS, ref, strict=True):
            video, audio = model(**_inputs(), **variant)
            assert torch.equal(video, ref_v) and torch.equal(audio, ref_a)
    # between forwards every block parameter is the host copy, with the loaded values
    block_param = model.video_model.blocks[2].self_attn.qkv.weight
    assert any(block_param.data_ptr() == h.data_ptr() for h in offload.host[2])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    offload.disable()
    assert model.offload is None
    _check(model, expected)


def test_block_offload_under_compiled_layers_adds_no_graphs(expected):
    model, counter = _compiled(expected)
    graphs = counter.frame_count
    offload = opt.enable_block_offload(model, "cpu")
    _check(model, expected)
    offload.disable()
    _check(model, expected)
    assert counter.frame_count == graphs


# --- fp8 --------------------------------------------------------------------------------------


def _scaled_mm_on_cpu() -> bool:
    try:
        a = torch.ones(16, 16).to(opt.FP8_DTYPE)
        one = torch.tensor(1.0)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError):
        return False


needs_scaled_mm = pytest.mark.skipif(
    not _scaled_mm_on_cpu(), reason="torch._scaled_mm has no CPU kernel in this torch build"
)


@needs_scaled_mm
def test_fp8_linear_close_to_the_linear():
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=g) / 8)
        x = torch.randn(3, 37, 64, generator=g)  # 111 rows: padded to a multiple of 16
        ref = linear(x)
        out = opt.Fp8Linear(linear)(x)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 0.06  # e4m3: 3 mantissa bits on both operands


@needs_scaled_mm
def test_fp8_model_close_and_reversible(expected):
    model = opt.enable_fp8(opt.fuse_projections(_tiny_model()), keep_original=True)
    assert isinstance(model.video_model.blocks[0].self_attn.qkv, opt.Fp8Linear)
    assert isinstance(model.video_model.blocks[0].ffn[0], opt.Fp8Linear)
    assert not isinstance(model.video_model.head.head, opt.Fp8Linear)
    with pytest.raises(ValueError, match="disable_fp8"), opt.reference_style(model):
        pass
    errors = _check(model, expected, tol=0.15)
    assert min(errors) > 0  # it is an approximation
    opt.disable_fp8(model)
    _check(model, expected)


# --- video VAE --------------------------------------------------------------------------------


def test_vae_without_upcasts_matches_in_bf16():
    cfg = get_preset("tiny").config.video_vae
    state = random_wan_vae_state(cfg, 2)
    vae = load_wan_vae(state, cfg, source="random", dtype=torch.bfloat16)
    latent = torch.randn(1, 48, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = vae.decode(latent, clamp=False).float()
        changed = opt.vae_skip_upcasts(vae)
        fast = vae.decode(latent, clamp=False).float()
        assert opt.vae_skip_upcasts(vae, enable=False) == changed > 0
        again = vae.decode(latent, clamp=False).float()
    ref32 = load_wan_vae(state, cfg, source="random", dtype=torch.float32)
    with torch.no_grad():
        exact = ref32.decode(latent, clamp=False)
    assert torch.equal(again, stock)
    # bf16 with or without the upcasts is equally far from float32
    assert _rel(fast, exact) < 2 * _rel(stock, exact) + 1e-3
    assert _rel(fast, stock) < 2e-2


def test_nearest_upsampling_without_upcast_is_exact():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample

    up = WanUpsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
    x = torch.randn(2, 3, 5, 7).to(torch.bfloat16)
    ref = up(x)
    holder = torch.nn.Sequential(up)
    assert opt.vae_skip_upcasts(holder) == 1
    assert torch.equal(holder[0](x), ref)


# --- entry points -----------------------------------------------------------------------------


def test_attention_probe_keeps_working_backends_and_skips_unsupported_ones():
    from torch.nn.attention import SDPBackend

    report, keep = opt.probe_attention_backends(torch.device("cpu"), torch.bfloat16, 128)
    # on CPU only the flash kernel exists; cuDNN/efficient have no kernel (not a failure)
    assert keep == [SDPBackend.FLASH_ATTENTION]
    assert all(0 < err < 2e-2 for err in report["FLASH_ATTENTION"].values())
    assert all(str(v).startswith("unsupported") for v in report["CUDNN_ATTENTION"].values())
    before = attn.cuda_sdpa_preference()
    attn.set_cuda_sdpa_preference([SDPBackend.FLASH_ATTENTION])
    assert attn.cuda_sdpa_preference() == [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    attn.set_cuda_sdpa_preference(None)
    assert attn.cuda_sdpa_preference() == before


def test_fast_path_resolution():
    assert opt.resolve_fast_path(RuntimeOptions(), "cpu") is None
    assert opt.resolve_fast_path(RuntimeOptions(), "cuda") == opt.FastPath()
    assert opt.resolve_fast_path(RuntimeOptions(fast_path=False), "cuda") is None
    assert opt.resolve_fast_path(RuntimeOptions(fast_path=True), "cpu") == opt.FastPath()
    no_compile = opt.resolve_fast_path(RuntimeOptions(compile=False), "cuda")
    assert no_compile == opt.FastPath(compile=False)
    assert opt.check_attention_backends("cpu") == {}


def test_pipeline_fast_path_flag(tiny_pipeline: OviPipeline):
    assert tiny_pipeline.fast_path is None  # CPU default: the plain path
    fast = OviPipeline.from_preset("tiny_1s", transforms=opt.FastPath(batch_cfg=True))
    assert fast.fast_path is not None and fast.fast_path.compile is False
    assert opt.projections_fused(fast.fusion) and fast.fusion.layer_fn is fusion_layer
    a = tiny_pipeline("waves on a beach", steps=2, seed=11)
    b = fast("waves on a beach", steps=2, seed=11)
    assert np.abs(a.video.astype(int) - b.video.astype(int)).max() <= 1
    assert _rel(torch.from_numpy(b.audio), torch.from_numpy(a.audio)) < 1e-4


# --- memory modes through the pipeline ----------------------------------------------------------


def test_memory_mode_options_resolve_onto_fast_path():
    def resolve(device, **options):
        return opt.resolve_fast_path(RuntimeOptions(**options), device)

    assert resolve("cpu", block_offload=True) == replace(opt.PLAIN_PATH, block_offload=True)
    assert resolve("cuda", batch_cfg=True) == opt.FastPath(batch_cfg=True)
    both = resolve("cuda", fast_path=False, block_offload=True, fp8_compute=True)
    assert both == replace(opt.PLAIN_PATH, block_offload=True, fp8=True)
    assert resolve("cuda", compile=False, fp8_compute=True) == opt.FastPath(compile=False, fp8=True)
    with pytest.raises(ValueError, match="fp8 compute needs a CUDA GPU"):
        resolve("cpu", fp8_compute=True)
    with pytest.raises(ValueError, match="fp8 compute needs a CUDA GPU"):
        RuntimeOptions(device="cpu", fp8_compute=True)


def test_fp8_compute_on_cpu_is_a_clear_error_before_loading(tmp_path):
    with pytest.raises(ValueError, match="fp8 compute needs a CUDA GPU"):
        OviPipeline.from_preset("tiny_1s", fp8_compute=True)
    # before any weight file is looked for (the folder is empty)
    with pytest.raises(ValueError, match="fp8 compute needs a CUDA GPU"):
        OviPipeline.from_pretrained(tmp_path, "720x720_5s", device="cpu", fp8_compute=True)


def _generate_with_latents(pipe: OviPipeline, **kwargs):
    """Run the pipeline and keep the final latents it decodes."""
    seen = {}
    decode = pipe.decode

    def keep(video, audio, *rest):
        seen["video"], seen["audio"] = video.clone(), audio.clone()
        return decode(video, audio, *rest)

    pipe.decode = keep
    try:
        out = pipe("waves on a beach", steps=3, seed=11, **kwargs)
    finally:
        del pipe.decode
    return out, seen


def test_pipeline_block_offload_equals_plain(tiny_pipeline: OviPipeline):
    pipe = OviPipeline.from_preset("tiny_1s", block_offload=True)
    assert isinstance(pipe.fusion.offload, opt.BlockOffload)
    assert pipe.fast_path == replace(opt.PLAIN_PATH, block_offload=True)
    assert pipe.cpu_offload  # T5 and the VAEs: component offload
    block_param = pipe.fusion.video_model.blocks[1].ffn[0].weight
    for slg_layer in (-1, 1):  # skip-layer guidance off, on
        ref, ref_latents = _generate_with_latents(tiny_pipeline, slg_layer=slg_layer)
        out, latents = _generate_with_latents(pipe, slg_layer=slg_layer)
        for name in ("video", "audio"):
            assert _rel(latents[name], ref_latents[name]) < 1e-6
        assert np.array_equal(out.video, ref.video)
        assert _rel(torch.from_numpy(out.audio), torch.from_numpy(ref.audio)) < 1e-6
    # _on_device left the DiT alone: its block weights are the offload's host copies again
    assert any(block_param.data_ptr() == h.data_ptr() for h in pipe.fusion.offload.host[1])


def test_pipeline_batch_cfg_keyword(tiny_pipeline: OviPipeline):
    pipe = OviPipeline.from_preset("tiny_1s", batch_cfg=True)
    assert pipe.fast_path == replace(opt.PLAIN_PATH, batch_cfg=True)
    ref, ref_latents = _generate_with_latents(tiny_pipeline)
    out, latents = _generate_with_latents(pipe)
    for name in ("video", "audio"):
        assert _rel(latents[name], ref_latents[name]) < TOL


@needs_scaled_mm
def test_fp8_then_block_offload_equals_fp8_alone(expected):
    fp8_only = opt.optimize_fusion(_tiny_model(), replace(opt.PLAIN_PATH, fp8=True), "cpu")
    both = opt.optimize_fusion(
        _tiny_model(), replace(opt.PLAIN_PATH, fp8=True, block_offload=True), "cpu"
    )
    assert isinstance(both.offload, opt.BlockOffload)
    assert isinstance(both.video_model.blocks[0].self_attn.q, opt.Fp8Linear)
    with torch.no_grad():
        for variant in VARIANTS:
            ref = fp8_only(**_inputs(), **variant)
            out = both(**_inputs(), **variant)
            assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
