"""Wan's umT5-XXL encoder checkpoint -> transformers `UMT5EncoderModel`.

The file is `models_t5_umt5-xxl-enc-bf16.pth` of `Wan-AI/Wan2.2-TI2V-5B`: a flat state dict in
Wan's own naming (242 tensors at full size, bf16). transformers' `UMT5EncoderModel` computes the
same function (gated GELU-tanh FFN, no attention scaling, a per-layer bidirectional
relative-position bias, RMS norms with eps 1e-6), so only the names change. Every key is renamed
by exactly one anchored rule below (`convert/rules.py`); a key no rule matches is an error that
names it.

`UMT5EncoderModel` ties `encoder.embed_tokens` to `shared`: the file's one `token_embedding` is
loaded into `shared` and the tie is restored afterwards, so the table is held (and cast) once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import UMT5Config, UMT5EncoderModel

from ..config import T5Config
from ..loading import CheckpointFamily, StateDict
from .rules import KeyRules

_L0 = "encoder.block.{n}.layer.0"  # self-attention sub-layer
_L1 = "encoder.block.{n}.layer.1"  # feed-forward sub-layer
# Wan key -> transformers key; {n} is the block, {p} the attention projection.
RULE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{n}.norm1.weight", f"{_L0}.layer_norm.weight"),
    ("blocks.{n}.attn.{p}.weight", f"{_L0}.SelfAttention.{{p}}.weight"),
    (
        "blocks.{n}.pos_embedding.embedding.weight",
        f"{_L0}.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{n}.norm2.weight", f"{_L1}.layer_norm.weight"),
    ("blocks.{n}.ffn.gate.0.weight", f"{_L1}.DenseReluDense.wi_0.weight"),
    ("blocks.{n}.ffn.fc1.weight", f"{_L1}.DenseReluDense.wi_1.weight"),
    ("blocks.{n}.ffn.fc2.weight", f"{_L1}.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
)
RULES = KeyRules(RULE_TEMPLATES, patterns={"n": r"\d+", "p": "[qkvo]"})
TIED_KEY = "encoder.embed_tokens.weight"  # alias of `shared.weight`, never in the file


def rename_key(key: str) -> str | None:
    """The transformers name of one Wan key, or None when no rule matches it."""
    return RULES.rename(key)


def convert_umt5_state(state: Mapping[str, torch.Tensor], source: str) -> StateDict:
    """Wan T5 state dict -> `UMT5EncoderModel` state dict (rename only; tensors untouched)."""
    return RULES.convert(state, source)


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


def _init(key: str, shape: tuple[int, ...], noise: torch.Tensor) -> torch.Tensor:
    """Linear weights N(0, 1/fan_in), embeddings N(0, 1), norm weights 1 + N(0, 0.1^2),
    position biases N(0, 0.5^2): activations stay O(1) through the unscaled attention."""
    if key.endswith(("norm1.weight", "norm2.weight")) or key == "norm.weight":
        return 1.0 + 0.1 * noise
    if key == "token_embedding.weight":
        return noise
    if key.endswith("pos_embedding.embedding.weight"):
        return 0.5 * noise
    return noise / shape[1] ** 0.5  # [out, in] projection: N(0, 1/fan_in)


def _tie_embeddings(model: UMT5EncoderModel) -> None:
    model.encoder.set_input_embeddings(model.shared)  # restore the tie broken by `assign`


UMT5 = CheckpointFamily(
    name="umT5",
    build=lambda config: UMT5EncoderModel(umt5_config(config)),
    convert=lambda state, _model, source, _device: convert_umt5_state(state, source),
    default_dtype=torch.bfloat16,
    computed=(TIED_KEY,),
    finish=_tie_embeddings,
    layout=wan_t5_shapes,
    init=_init,
)
# (state, T5Config, *, source, dtype=bf16, device="cpu") -> UMT5EncoderModel
load_t5 = UMT5.load
# (config, seed=0, dtype=fp32, device=None) -> random weights in Wan's file format (`_init`)
random_t5_state = UMT5.random_state
