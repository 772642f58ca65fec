"""The single attention entry point: math, layout, backend choice."""

from __future__ import annotations

import pytest
import torch

from model.modules import attention as attn


def _naive(q, k, v):  # [B, L, H, D]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)


def test_matches_naive_softmax_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 3, 12, generator=g)
    k, v = torch.randn(2, 5, 3, 12, generator=g), torch.randn(2, 5, 3, 12, generator=g)
    out = attn.attention(q, k, v)
    assert out.shape == (2, 7, 3, 12)
    torch.testing.assert_close(out, _naive(q, k, v), rtol=1e-5, atol=1e-5)


def test_backend_choice():
    assert attn.attention_backend("cpu", torch.bfloat16) == "sdpa"
    expected_cuda = "fa3" if attn._fa3_func is not None else "sdpa-cuda"
    assert attn.attention_backend("cuda", torch.bfloat16) == expected_cuda
    assert attn.attention_backend("cuda", torch.float32) == "sdpa-cuda"
    attn.force_backend("sdpa")
    try:
        assert attn.attention_backend("cuda", torch.bfloat16) == "sdpa"
    finally:
        attn.force_backend(None)
    with pytest.raises(ValueError):
        attn.force_backend("xformers")  # type: ignore[arg-type]
