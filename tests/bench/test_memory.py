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
