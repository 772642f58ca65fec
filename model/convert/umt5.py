"""Wan's umT5-XXL encoder checkpoint -> transformers `UMT5EncoderModel`.

The file is `models_t5_umt5-xxl-enc-bf16.pth` of `Wan-AI/Wan2.2-TI2V-5B`: a flat state dict in
Wan's own naming (242 tensors at full size, bf16). transformers' `UMT5EncoderModel` computes the
same function (gated GELU-tanh FFN, no attention scaling, a per-layer bidirectional
relative-position bias, RMS norms with eps 1e-6), so only the names change. Every key is renamed
by exactly one anchored rule below; a key no rule matches is an error that names it.

`UMT5EncoderModel` ties `encoder.embed_tokens` to `shared`: the file's one `token_embedding` is
loaded into `shared` and the tie is restored afterwards, so the table is held (and cast) once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import UMT5Config, UMT5EncoderModel

from ..config import T5Config
from ..loading import CheckpointMismatchError, StateDict, load_strict

# Wan key (fullmatch) -> transformers key; `\1`, `\2` are the captured block and projection.
_L0 = r"encoder.block.\1.layer.0"  # self-attention sub-layer
_L1 = r"encoder.block.\1.layer.1"  # feed-forward sub-layer
RENAME_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        (r"token_embedding\.weight", "shared.weight"),
        (r"blocks\.(\d+)\.norm1\.weight", rf"{_L0}.layer_norm.weight"),
        (r"blocks\.(\d+)\.attn\.([qkvo])\.weight", rf"{_L0}.SelfAttention.\2.weight"),
        (
            r"blocks\.(\d+)\.pos_embedding\.embedding\.weight",
            rf"{_L0}.SelfAttention.relative_attention_bias.weight",
        ),
        (r"blocks\.(\d+)\.norm2\.weight", rf"{_L1}.layer_norm.weight"),
        (r"blocks\.(\d+)\.ffn\.gate\.0\.weight", rf"{_L1}.DenseReluDense.wi_0.weight"),
        (r"blocks\.(\d+)\.ffn\.fc1\.weight", rf"{_L1}.DenseReluDense.wi_1.weight"),
        (r"blocks\.(\d+)\.ffn\.fc2\.weight", rf"{_L1}.DenseReluDense.wo.weight"),
        (r"norm\.weight", "encoder.final_layer_norm.weight"),
    )
)
TIED_KEY = "encoder.embed_tokens.weight"  # alias of `shared.weight`, never in the file


def rename_key(key: str) -> str | None:
    """The transformers name of one Wan key, or None when no rule matches it."""
    hits = [(m, t) for p, t in RENAME_RULES if (m := p.fullmatch(key)) is not None]
    if len(hits) > 1:  # overlapping rules would make the result depend on their order
        raise ValueError(f"{key!r} matches {len(hits)} rename rules; the table must be disjoint")
    return hits[0][0].expand(hits[0][1]) if hits else None


def convert_umt5_state(state: Mapping[str, torch.Tensor], source: str) -> StateDict:
    """Wan T5 state dict -> `UMT5EncoderModel` state dict (rename only; tensors untouched)."""
    out: StateDict = {}
    unknown: list[str] = []
    for key, value in state.items():
        new_key = rename_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            out[new_key] = value
    if unknown:
        raise CheckpointMismatchError(source, [], sorted(unknown), [])
    return out


def umt5_config(config: T5Config) -> UMT5Config:
    """The transformers config of the same network (encoder only, inference: no dropout)."""
    if config.dim_attn % config.num_heads:
        raise ValueError(f"dim_attn {config.dim_attn} is not divisible by {config.num_heads} heads")
    return UMT5Config(
        vocab_size=config.vocab,
        d_model=config.dim,
        d_kv=config.head_dim,
        d_ff=config.dim_ffn,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.num_buckets,
        relative_attention_max_distance=config.max_distance,
        dropout_rate=0.0,
        layer_norm_epsilon=config.eps,
        feed_forward_proj="gated-gelu",  # GELU-tanh gate, as Wan's T5
        tie_word_embeddings=True,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def load_t5(
    state: Mapping[str, torch.Tensor],
    config: T5Config,
    *,
    source: str,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
) -> UMT5EncoderModel:
    """Wan T5 state dict -> ready `UMT5EncoderModel` on `device` in `dtype`.

    Built on the meta device and assigned, so meta tensors with `device="meta"` check a
    full-size layout without allocating it.
    """
    converted = convert_umt5_state(state, source)
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(config))
    load_strict(model, converted, source, dtype=dtype, computed=(TIED_KEY,))
    model.encoder.set_input_embeddings(model.shared)  # restore the tie broken by `assign`
    return model.to(device).eval().requires_grad_(False)


def wan_t5_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a Wan T5 file for `config`, in the file's order."""
    dim, attn, ffn = config.dim, config.dim_attn, config.dim_ffn
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (config.vocab, dim)}
    for n in range(config.num_layers):
        shapes |= {
            f"blocks.{n}.norm1.weight": (dim,),
            f"blocks.{n}.attn.q.weight": (attn, dim),
            f"blocks.{n}.attn.k.weight": (attn, dim),
            f"blocks.{n}.attn.v.weight": (attn, dim),
            f"blocks.{n}.attn.o.weight": (dim, attn),
            f"blocks.{n}.norm2.weight": (dim,),
            f"blocks.{n}.ffn.gate.0.weight": (ffn, dim),
            f"blocks.{n}.ffn.fc1.weight": (ffn, dim),
            f"blocks.{n}.ffn.fc2.weight": (dim, ffn),
            f"blocks.{n}.pos_embedding.embedding.weight": (config.num_buckets, config.num_heads),
        }
    shapes["norm.weight"] = (dim,)
    return shapes


def random_t5_state(config: T5Config, seed: int) -> StateDict:
    """Random float32 weights in Wan's file format (the random-weight `tiny` preset).

    Linear weights N(0, 1/fan_in), embeddings N(0, 1), norm weights 1 + N(0, 0.1^2), position
    biases N(0, 0.5^2): activations stay O(1) through the unscaled attention.
    """
    gen = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for key, shape in wan_t5_shapes(config).items():
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key == "token_embedding.weight":
            value = torch.randn(shape, generator=gen)
        elif key.endswith("pos_embedding.embedding.weight"):
            value = 0.5 * torch.randn(shape, generator=gen)
        else:  # [out, in] projection
            value = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        state[key] = value
    return state
