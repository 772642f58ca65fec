"""umT5 text encoder: conformance, the Wan -> transformers key rules, the tiny tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from model.config import T5Config
from model.convert.umt5 import (
    RULES,
    TIED_KEY,
    convert_umt5_state,
    load_t5,
    random_t5_state,
    rename_key,
    wan_t5_shapes,
)
from model.loading import expected_shapes, meta_state_dict
from model.modules.text_encoder import (
    EOS_ID,
    PAD_ID,
    TextEncoder,
    build_tiny_tokenizer,
    load_tokenizer,
    split_by_mask,
)
from model.presets import get_preset
from tests.model._reference import REFERENCE, layout
from tools.conformance import run_case

LAYOUT = layout("t5_umt5_xxl")
TINY = get_preset("tiny").config.t5


def test_conformance_t5_case_passes():
    checks = run_case("t5", REFERENCE / "t5")
    assert checks and all(c.passed for c in checks), "\n".join(c.line() for c in checks)
    assert {c.name for c in checks} >= {"hidden_states", "context_0", "context_1"}


# --- key rules and layout ----------------------------------------------------------------------


def test_wan_shapes_equal_the_full_size_layout():
    layout = {k: tuple(v) for k, v in LAYOUT["tensors"].items()}
    assert wan_t5_shapes(T5Config()) == layout
    assert len(layout) == LAYOUT["num_tensors"] == 242


def test_every_layout_key_has_exactly_one_rule_and_a_distinct_name():
    names = [rename_key(key) for key in LAYOUT["tensors"]]  # raises if two rules claim a key
    assert None not in names and len(set(names)) == len(names)
    assert (
        rename_key("blocks.23.attn.o.weight") == "encoder.block.23.layer.0.SelfAttention.o.weight"
    )
    assert rename_key("blocks.3.ffn.gate.0.weight") == (
        "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"
    )
    assert rename_key("xblocks.0.norm1.weight") is None  # anchored
    assert len(RULES) == 9


def test_full_size_layout_loads_on_meta_consuming_every_tensor():
    state = meta_state_dict(LAYOUT["tensors"], torch.bfloat16)
    converted = convert_umt5_state(state, "layout")
    assert len(converted) == len(set(converted)) == 242

    model = load_t5(state, T5Config(), source="layout", device="meta")
    expected = expected_shapes(model, skip=(TIED_KEY,))
    assert expected == {k: tuple(v.shape) for k, v in converted.items()}
    assert model.encoder.embed_tokens.weight is model.shared.weight  # tied, held once
    assert sum(p.numel() for p in model.parameters()) == LAYOUT["num_params"]
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- tiny tokenizer and TextEncoder ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> TextEncoder:
    tokenizer = build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), TINY.vocab)
    model = load_t5(random_t5_state(TINY, seed=1), TINY, source="random", dtype=torch.float32)
    return TextEncoder(model, tokenizer, TINY.text_len)


def test_tiny_tokenizer_is_deterministic_and_fits_the_vocab(tmp_path):
    a = build_tiny_tokenizer(tmp_path / "a", TINY.vocab)
    build_tiny_tokenizer(tmp_path / "b", TINY.vocab)
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len(a) <= TINY.vocab
    assert (a.pad_token_id, a.eos_token_id) == (PAD_ID, EOS_ID)
    assert len(load_tokenizer(tmp_path / "a")) == len(a)


def test_encode_returns_one_unpadded_context_per_prompt(tiny_encoder):
    prompts = ["a cat", "Two friends laugh while walking along the beach at sunset."]
    ids, mask = tiny_encoder.tokenize(prompts)
    assert ids.shape == mask.shape == (2, TINY.text_len)
    lengths = mask.sum(dim=1).tolist()
    assert lengths[0] < lengths[1]
    for row, n in zip(ids.tolist(), lengths, strict=True):
        assert row[n - 1] == EOS_ID and all(t == PAD_ID for t in row[n:])

    contexts = tiny_encoder.encode(prompts)
    assert [tuple(c.shape) for c in contexts] == [(n, TINY.dim) for n in lengths]
    assert all(torch.isfinite(c).all() for c in contexts)
    # each prompt's rows do not depend on the rest of the batch (padding is masked as keys)
    alone = tiny_encoder.encode(prompts[:1])[0]
    torch.testing.assert_close(alone, contexts[0], rtol=1e-5, atol=1e-5)


def test_encode_cleans_text_and_truncates(tiny_encoder):
    a = tiny_encoder.encode(["  a   cat &amp; a dog "])[0]
    b = tiny_encoder.encode(["a cat & a dog"])[0]
    torch.testing.assert_close(a, b)

    ids, mask = tiny_encoder.tokenize(["the dog " * 100])
    assert mask.sum().item() == TINY.text_len and ids[0, -1].item() == EOS_ID
    assert tiny_encoder.encode(["the dog " * 100])[0].shape == (TINY.text_len, TINY.dim)


def test_encode_rejects_a_bare_string(tiny_encoder):
    with pytest.raises(TypeError):
        tiny_encoder.encode("a cat")


def test_tokenizer_from_a_directory(tmp_path, tiny_encoder):
    build_tiny_tokenizer(tmp_path, TINY.vocab)
    encoder = TextEncoder(tiny_encoder.model, text_len=TINY.text_len, tokenizer_dir=tmp_path)
    torch.testing.assert_close(encoder.encode(["a cat"])[0], tiny_encoder.encode(["a cat"])[0])
    with pytest.raises(ValueError, match="not both"):
        TextEncoder(tiny_encoder.model, encoder.tokenizer, tokenizer_dir=tmp_path)
    with pytest.raises(ValueError, match="no tokenizer"):
        TextEncoder(tiny_encoder.model).encode(["a cat"])


def test_split_by_mask_uses_mask_sums():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    out = split_by_mask(hidden, mask)
    assert [tuple(o.shape) for o in out] == [(3, 3), (1, 3)]
    torch.testing.assert_close(out[0], hidden[0, :3])


def test_random_state_is_seeded_and_in_the_file_format():
    a, b = random_t5_state(TINY, seed=3), random_t5_state(TINY, seed=3)
    assert {k: tuple(v.shape) for k, v in a.items()} == wan_t5_shapes(TINY)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["norm.weight"], random_t5_state(TINY, seed=4)["norm.weight"])


def test_conformance_t5_reads_max_distance_inside_config_too(tmp_path):
    """The public case has relative_attention_max_distance at the top level; a case that keeps it
    in `config` must be read the same way (a wrong distance changes the bucket table)."""
    case_dir = tmp_path / "t5"
    case_dir.mkdir()
    for f in (REFERENCE / "t5").glob("*.safetensors"):
        (case_dir / f.name).symlink_to(f)
    case = json.loads((REFERENCE / "t5" / "case.json").read_text())
    distance = case.pop("relative_attention_max_distance")
    case["config"]["relative_attention_max_distance"] = distance
    (case_dir / "case.json").write_text(json.dumps(case))
    assert all(c.passed for c in run_case("t5", case_dir))
    case["config"]["relative_attention_max_distance"] = 9  # used, hence a mismatch
    (case_dir / "case.json").write_text(json.dumps(case))
    assert not all(c.passed for c in run_case("t5", case_dir))
