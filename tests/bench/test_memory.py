"""`bench/memory.py`: live-bytes accounting on the meta device (the full-size estimate itself runs
in `test_bench_small.py`, as the `memory` section of `python -m bench --small`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.memory import LiveBytes, flash_attention_on_meta, module_bytes


def test_live_bytes_counts_the_storages_alive_at_once():
    tracker = LiveBytes()
    weight = torch.empty(1024, device="meta")  # 4 KiB, alive before the measurement
    tracker.track(weight)

    def fn() -> torch.Tensor:
        a = torch.empty(256, device="meta")  # 1 KiB
        b = a * 2  # 1 KiB more: the peak, 2 KiB
        del a
        weight.view(32, 32).t()  # views of a tracked tensor: no new bytes
        return b.sum()  # 4 bytes, returned (alive after)

    peak, out = tracker.measure(fn)
    assert peak == 2048
    assert tracker.current == 4096 + 4 and out.shape == ()
    del out
    assert tracker.current == 4096


def test_attention_is_counted_as_a_flash_kernel_not_a_score_matrix():
    q = torch.empty(1, 2, 4096, 64, device="meta", dtype=torch.bfloat16)
    out_and_lse = q.numel() * 2 + 2 * 4096 * 4  # bf16 output + fp32 log-sum-exp
    tracker = LiveBytes()
    tracker.track(q)
    with flash_attention_on_meta():
        flash, _ = tracker.measure(lambda: F.scaled_dot_product_attention(q, q, q))
    math, _ = tracker.measure(lambda: F.scaled_dot_product_attention(q, q, q))
    assert out_and_lse <= flash < out_and_lse + 1024  # + the kernel's RNG seed/offset
    assert math > 2 * 4096 * 4096 * 2  # the math fallback's [1, 2, L, L] scores
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


def test_module_bytes_counts_shared_storage_once():
    with torch.device("meta"):
        a = torch.nn.Linear(16, 32)  # 16*32 + 32 floats
        b = torch.nn.Linear(16, 32)
    b.weight = a.weight  # tied
    both = torch.nn.ModuleList([a, b])
    assert module_bytes(a) == (16 * 32 + 32) * 4
    assert module_bytes(both) == (16 * 32 + 2 * 32) * 4


def test_a_step_peak_does_not_depend_on_the_depth():
    """Why `estimate_memory` may measure a step on a `STEP_LAYERS`-deep DiT (30 in the model)."""
    from bench.memory import STEP_LAYERS, meta_components, shallow
    from model.presets import get_preset

    config = get_preset("tiny").config

    def peak(layers: int, slg_layer: int | None) -> int:
        dit = meta_components(shallow(config, layers), parts=("fusion",))["fusion"]
        v, a = config.fusion.video, config.fusion.audio
        tracker = LiveBytes()
        tracker.track(list(dit.parameters()) + list(dit.buffers()))
        video = torch.empty(1, v.in_dim, 5, 8, 8, device="meta", dtype=torch.bfloat16)
        audio = torch.empty(1, 21, a.in_dim, device="meta", dtype=torch.bfloat16)
        text = torch.empty(1, 7, v.text_dim, device="meta", dtype=torch.bfloat16)
        t = torch.empty(1, device="meta")
        with torch.no_grad():
            found, _ = tracker.measure(
                lambda: dit(video, audio, t, text, text, slg_layer=slg_layer)
            )
        return found

    assert peak(STEP_LAYERS, 1) == peak(7, 1) == peak(7, 5) > 0
    assert peak(STEP_LAYERS, None) == peak(7, None)
