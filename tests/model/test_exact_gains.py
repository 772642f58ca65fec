"""The exact gains of issue 13 (`FastPath` switches): each computes what the plain path computes.

CPU, float32, the tiny preset: bit-equal where the same ops run on the same inputs, else
rel_l2 <= 1e-6. GPU timings of each switch are the bench's (`bench/README.md`).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.nn.attention import SDPBackend

from model import optimize as opt
from model.convert.fusion import load_fusion, random_fusion_state
from model.convert.wan_vae import load_wan_vae, random_wan_vae_state
from model.modules import attention as attn
from model.modules.fusion import ClipCache, FusionModel
from model.options import RuntimeOptions
from model.pipeline import denoise
from model.presets import get_preset
from model.sampling import SamplingParams

TINY = get_preset("tiny").config.fusion
EXACT = 1e-6
CASES = [(False, None), (True, 1)]  # (first_frame_is_clean, slg_layer)

pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _model(dtype: torch.dtype = torch.float32) -> FusionModel:
    return load_fusion(random_fusion_state(TINY, 1), TINY, source="random", dtype=dtype)


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        video=torch.randn(1, 48, 5, 4, 6, generator=g),
        audio=torch.randn(1, 23, 20, generator=g),
        t=torch.full((1,), 731, dtype=torch.int64),
        pos=(torch.randn(1, 7, 32, generator=g), torch.randn(1, 5, 32, generator=g)),
        neg=(torch.randn(1, 3, 32, generator=g), torch.randn(1, 4, 32, generator=g)),
    )


@pytest.fixture(scope="module")
def plain() -> FusionModel:
    return _model()


def _passes(model: FusionModel, x: dict, clean: bool, slg: int | None) -> list[torch.Tensor]:
    """The two guidance passes as `denoise` runs them (same latent and t tensors)."""
    with torch.no_grad():
        pos = model(x["video"], x["audio"], x["t"], *x["pos"], first_frame_is_clean=clean)
        neg = model(x["video"], x["audio"], x["t"], *x["neg"], clean, slg)
    return [*pos, *neg]


def _sharing(model: FusionModel) -> FusionModel:
    model.clip_cache, model.share_first_layer = ClipCache(), True
    return model


def _plain_and_sharing(plain: FusionModel, clean: bool, slg: int | None) -> tuple:
    """(inputs, the plain model's two passes on them, a model sharing its first-layer work)."""
    x = _inputs()
    return x, _passes(plain, x, clean, slg), _sharing(_model())


# --- 1. shared first-layer work ---------------------------------------------------------------


@pytest.mark.parametrize("clean, slg", CASES)
def test_shared_first_layer_sequential_passes_are_bit_equal(plain, clean, slg):
    x, ref, model = _plain_and_sharing(plain, clean, slg)
    with model.clip():
        out = _passes(model, x, clean, slg)
        assert model.clip_cache._shared is None  # the negative pass took (and freed) the slot
    assert all(torch.equal(o, r) for o, r in zip(out, ref, strict=True))


def test_shared_first_layer_runs_the_text_free_work_once(plain):
    x = _inputs()
    model = _sharing(_model())
    calls: dict[str, int] = {}

    def count(name: str):
        def hook(*_args):
            calls[name] = calls.get(name, 0) + 1

        return hook

    for tower in ("video_model", "audio_model"):
        t = getattr(model, tower)
        t.blocks[0].self_attn.register_forward_hook(count(f"{tower}.0.self_attn"))
        t.blocks[1].self_attn.register_forward_hook(count(f"{tower}.1.self_attn"))
        t.patch_embedding.register_forward_hook(count(f"{tower}.patch"))
        t.time_projection.register_forward_hook(count(f"{tower}.time"))
        t.blocks[0].modulation.register_forward_hook(count(f"{tower}.0.modulation"))
        t.blocks[1].modulation.register_forward_hook(count(f"{tower}.1.modulation"))
    with model.clip():
        _passes(model, x, False, None)
    for tower in ("video_model", "audio_model"):
        assert calls[f"{tower}.0.self_attn"] == 1  # the text-free half of layer 0: once
        assert calls[f"{tower}.patch"] == calls[f"{tower}.time"] == 1  # time MLP once per step
        assert calls[f"{tower}.1.self_attn"] == 2  # later layers see the text: both passes
        # a whole layer's two halves share one modulation: once per pass; layer 0's shared
        # self-attention half once, its cross half once per pass
        assert calls[f"{tower}.1.modulation"] == 2 and calls[f"{tower}.0.modulation"] == 3


def test_shared_first_layer_misses_on_changed_inputs(plain):
    """Another latent tensor, an in-place change, another t or first_frame_is_clean: no reuse."""
    x = _inputs()
    model = _sharing(_model())
    with torch.no_grad(), model.clip():
        model(x["video"], x["audio"], x["t"], *x["pos"])
        x["video"].mul_(0.5)  # same tensor, new version
        out = model(x["video"], x["audio"], x["t"], *x["neg"])
        model(x["video"], x["audio"], x["t"], *x["pos"])
        other_t = model(x["video"], x["audio"], torch.full((1,), 400), *x["neg"])
        model(x["video"], x["audio"], x["t"], *x["pos"])
        clean = model(x["video"], x["audio"], x["t"], *x["neg"], first_frame_is_clean=True)
    with torch.no_grad():
        ref = plain(x["video"], x["audio"], x["t"], *x["neg"])
        ref_t = plain(x["video"], x["audio"], torch.full((1,), 400), *x["neg"])
        ref_clean = plain(x["video"], x["audio"], x["t"], *x["neg"], first_frame_is_clean=True)
    for got, want in ((out, ref), (other_t, ref_t), (clean, ref_clean)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("clean, slg", CASES)
def test_shared_first_layer_batched_cfg_equals_sequential(plain, clean, slg):
    x, ref, model = _plain_and_sharing(plain, clean, slg)
    with torch.no_grad():
        out = model.forward_cfg(x["video"], x["audio"], x["t"], x["pos"], x["neg"], clean, slg)
    errors = [_rel(o, r) for o, r in zip(out, ref, strict=True)]
    assert max(errors) <= EXACT, errors  # measured: 0 (bit-equal) on this CPU


def test_denoise_with_the_fast_path_equals_plain(plain):
    """The whole loop with the plan's exact switches (shared first layer, fp32 weight cache):
    sequential bit-equal, batched within 1e-6."""
    x = _inputs()
    model = opt.optimize_fusion(_model(), opt.FastPath(compile=False, check_attention=False))
    assert model.share_first_layer and model.clip_cache is not None
    texts = (x["pos"][0], *x["neg"])
    params = SamplingParams(steps=3, slg_layer=1)
    first = x["video"][:, :, :1] * 0.5
    with torch.no_grad():
        ref = denoise(plain, x["video"], x["audio"], *texts, params, first_frame_latent=first)
        with model.clip():
            out = denoise(model, x["video"], x["audio"], *texts, params, first_frame_latent=first)
        with model.clip():
            batched = denoise(
                model, x["video"], x["audio"], *texts, params, first_frame_latent=first,
                batch_cfg=True,
            )  # fmt: skip
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    assert max(_rel(batched[0], ref[0]), _rel(batched[1], ref[1])) <= EXACT


def test_shared_first_layer_under_compiled_layers(plain):
    """The compiled layer and its two compiled halves (fullgraph: no graph break) give the plain
    model's passes bit for bit; a second step of the same shapes compiles nothing new."""
    x = _inputs()
    model = _sharing(_model())
    counter = CompileCounter()
    opt.compile_layers(model, backend=counter, fullgraph=True)
    ref = _passes(plain, x, False, 1)
    with model.clip():
        out = _passes(model, x, False, 1)
    assert all(torch.equal(o, r) for o, r in zip(out, ref, strict=True))
    graphs = counter.frame_count
    assert graphs == 3, graphs  # fusion_layer, fusion_layer_self, fusion_layer_cross
    y = _inputs(seed=1)
    with model.clip():
        _passes(model, y, False, 1)
    assert counter.frame_count == graphs
    with torch.no_grad():  # batched: the halves on B rows, the rest on 2B (graphs of batch 2)
        batched = model.forward_cfg(x["video"], x["audio"], x["t"], x["pos"], x["neg"], False, 1)
    assert max(_rel(o, r) for o, r in zip(batched, ref, strict=True)) <= EXACT


def test_memory_modes_do_not_share():
    """cpu/block offload, fast_vae: the denoise phase is their peak, nothing extra held there."""
    on = opt.resolve_fast_path(RuntimeOptions(fast_path=True), "cpu")
    assert on.share_first_layer and on.cache_fp32_weights
    for mode in ("cpu_offload", "block_offload", "fast_vae"):
        plan = opt.resolve_fast_path(RuntimeOptions(fast_path=True, **{mode: True}), "cpu")
        assert not plan.share_first_layer and not plan.cache_fp32_weights
    assert not opt.PLAIN_PATH.share_first_layer


# --- 2. fp32 time-MLP weights cast once per clip -----------------------------------------------


def _fp32_entries(cache: ClipCache) -> int:
    return sum(1 for key in cache._entries if key[:2] == ("fp32", "weight"))


def test_fp32_time_weights_cached_once_per_clip_bit_equal():
    x = _inputs()
    model = _model(torch.bfloat16)
    args = [y.bfloat16() for y in (x["video"], x["audio"])]
    ctx = [y.bfloat16() for y in x["pos"]]
    with torch.no_grad():
        ref = model(*args, x["t"], *ctx)
        model.clip_cache = ClipCache(fp32_weights=True)
        with model.clip():
            out = model(*args, x["t"], *ctx)
            again = model(*args, x["t"], *ctx)
            # time_embedding (2 linears) + time_projection (1) per tower, kept once
            assert _fp32_entries(model.clip_cache) == 6
    assert all(torch.equal(a, b) for a, b in zip((*out, *again), (*ref, *ref), strict=True))


def test_fp32_weights_are_not_copied():
    model = _model()
    model.clip_cache = ClipCache(fp32_weights=True)
    x = _inputs()
    with torch.no_grad(), model.clip():
        model(x["video"], x["audio"], x["t"], *x["pos"])
        assert _fp32_entries(model.clip_cache) == 0


# --- 3. fused GELU -----------------------------------------------------------------------------


def test_fused_gelu_keeps_keys_and_values_and_is_reversible(plain):
    model = _model()
    keys = list(model.state_dict())
    assert opt.fuse_gelu(model) == 2 * TINY.video.num_layers
    assert list(model.state_dict()) == keys  # ffn.0.weight, ffn.2.weight, ...
    x = _inputs()
    for clean, slg in CASES:  # off CUDA the fused module runs the plain ops (CPU's
        # `_addmm_activation` is the erf GELU): bit-equal; the CUDA kernel's error is the bench's
        assert all(
            torch.equal(o, r)
            for o, r in zip(
                _passes(model, x, clean, slg), _passes(plain, x, clean, slg), strict=True
            )
        )
    with opt.reference_style(model):
        assert not any(isinstance(m, opt.FusedGeluFFN) for m in model.modules())
    assert any(isinstance(m, opt.FusedGeluFFN) for m in model.modules())
    assert opt.fuse_gelu(model, enable=False) == 2 * TINY.video.num_layers


# --- 4. attention backend per shape ------------------------------------------------------------


@pytest.fixture()
def shape_table():
    saved = attn.shape_backends()
    attn.set_shape_backends(None)
    yield
    attn.set_shape_backends(saved)


def _qkv(lq: int, lk: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, n, 2, 16, generator=g) for n in (lq, lk, lk)]


def test_attention_choice_picks_the_fastest_working_backend_per_shape(shape_table):
    shapes = [(40, 40, 2, 16, torch.float32), (40, 9, 2, 16, torch.float32)]
    fake = {  # ms per (backend, Lk); CUDNN "fails" on every shape
        ("MATH", 40): 2.0, ("FLASH_ATTENTION", 40): 1.0,
        ("MATH", 9): 0.5, ("FLASH_ATTENTION", 9): 0.9,
    }  # fmt: skip

    def timer(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
        if name == "CUDNN_ATTENTION":
            raise RuntimeError("no kernel")
        return fake[name, k.shape[1]]

    names = ["CUDNN_ATTENTION", "FLASH_ATTENTION", "MATH"]
    timings = opt.choose_attention_backends(shapes, "cpu", names, timer)
    assert attn.shape_backends() == {shapes[0]: "FLASH_ATTENTION", shapes[1]: "MATH"}
    assert timings[shapes[0]]["CUDNN_ATTENTION"].startswith("error")
    # the outputs are the chosen backend's (the two CPU kernels differ in rounding)
    for (lq, lk, *_), name in ((shapes[0][:2], "FLASH_ATTENTION"), (shapes[1][:2], "MATH")):
        q, k, v = _qkv(lq, lk)
        assert torch.equal(attn.attention(q, k, v), attn.run_backend(name, q, k, v))
    # a shape already chosen is not timed again; an unlisted shape takes the automatic path
    assert opt.choose_attention_backends(shapes, "cpu", names, timer) == {}
    q, k, v = _qkv(12, 12)
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(y.transpose(1, 2) for y in (q, k, v))
    ).transpose(1, 2)
    assert torch.equal(attn.attention(q, k, v), expected)


def test_attention_candidates_are_the_probes_survivors(shape_table):
    saved = attn.cuda_sdpa_preference()
    try:
        attn.set_cuda_sdpa_preference([SDPBackend.FLASH_ATTENTION])  # the probe dropped the rest
        assert opt.attention_candidates("cuda", torch.bfloat16, 128) in (
            ["FLASH_ATTENTION"],
            ["FA3", "FLASH_ATTENTION"],  # FA3 only where importable and kept by the probe
        )
        assert "CUDNN_ATTENTION" not in opt.attention_candidates("cpu", torch.float32, 16)
    finally:
        attn.set_cuda_sdpa_preference(saved)


def test_attention_choice_is_read_at_trace_time_without_recompiles(shape_table):
    q, k, v = _qkv(40, 9)
    attn.set_shape_backends({attn.shape_key(q, k): "MATH"})
    counter = CompileCounter()
    fn = torch.compile(attn.attention, backend=counter, dynamic=False)
    first = fn(q, k, v)
    for seed in (1, 2):
        fn(*_qkv(40, 9, seed))
    assert counter.frame_count == 1
    assert torch.equal(first, attn.run_backend("MATH", q, k, v))
    # another resolution's shapes join the table: the graph compiled for this one stays valid
    q2, k2, v2 = _qkv(30, 9)
    attn.set_shape_backends({**attn.shape_backends(), attn.shape_key(q2, k2): "FLASH_ATTENTION"})
    assert torch.equal(fn(q2, k2, v2), attn.run_backend("FLASH_ATTENTION", q2, k2, v2))
    fn(q, k, v)
    assert counter.frame_count == 2  # one new graph for the new shape, none for the old one


def test_clip_attention_shapes_cover_the_forward(plain, shape_table):
    """The six shapes `choose_clip_attention` times are the ones a forward calls."""
    x = _inputs()
    seen: set = set()
    real = attn.run_backend

    def record(name, q, k, v):  # every listed shape goes through run_backend
        seen.add(attn.shape_key(q, k))
        return real(name, q, k, v)

    shapes = opt.clip_attention_shapes(plain, 5 * 2 * 3, 23)
    attn.set_shape_backends(dict.fromkeys(shapes, "MATH"))
    try:
        attn.run_backend = record
        _passes(plain, x, False, None)
    finally:
        attn.run_backend = real
    assert seen == set(shapes)


# --- 5. VAE decoder: channels-last, compiled norm + activation ---------------------------------


@pytest.fixture(scope="module")
def vae_case():
    cfg = get_preset("tiny").config.video_vae
    vae = load_wan_vae(random_wan_vae_state(cfg, 2), cfg, source="random", dtype=torch.float32)
    latent = torch.randn(1, 48, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(latent, clamp=False)
    return vae, latent, ref


def test_vae_channels_last_decode_equal(vae_case):
    vae, latent, ref = vae_case
    vae.use_channels_last()
    try:
        with torch.no_grad():
            out = vae.decode(latent, clamp=False)
            frames = vae.decode_uint8(latent)
    finally:
        vae.use_channels_last(False)
    assert _rel(out, ref) <= EXACT
    with torch.no_grad():
        assert torch.equal(frames, vae.decode_uint8(latent))


def test_vae_compiled_decoder_is_bit_equal(vae_case):
    vae, latent, ref = vae_case
    vae.compile_decoder(backend="aot_eager")
    try:
        with torch.no_grad():
            out = vae.decode(latent, clamp=False)
    finally:
        vae.compile_decoder(enable=False)
    assert torch.equal(out, ref)
