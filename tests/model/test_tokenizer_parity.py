"""Tokenizer parity (issue 12, item 5): text -> ids as the official release (transformers
<= 4.51.3) computes them, while we run transformers 5.

`tests/fixtures/tokenizer_parity/make_table.py`, run in a separate venv with transformers 4.51.3,
built `umt5_standin/` (umt5-xxl's file set: spiece.model, tokenizer.json and the two configs) and
recorded 4.51.3's `AutoTokenizer` ids for the reference prompts and hostile strings. Here our
loader and our tokenizer call (transformers 5) must give the same ids for every case."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from model.modules.text_encoder import TextEncoder, load_tokenizer, tokenize_ids

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer_parity"
FOLDER = HERE / "umt5_standin"
TABLE = json.loads((HERE / "ids_transformers_4.51.3.json").read_text(encoding="utf-8"))
ROWS = {row["name"]: row for row in TABLE["rows"]}
UMT5_FILES = {"spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(FOLDER)


def test_the_table_is_4_51_3s_for_this_folder() -> None:
    assert TABLE["transformers_version"] == "4.51.3"
    assert {f.name for f in FOLDER.iterdir()} == UMT5_FILES == set(TABLE["files_sha256"])
    for name, digest in TABLE["files_sha256"].items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name
    # the hostile cases the issue names are all there
    for case in ("emoji", "cjk", "rtl", "control", "ten_k_mixed", "ten_k_words", "empty"):
        assert f"hostile.{case}" in ROWS
    assert len(ROWS["hostile.ten_k_mixed"]["text"]) == 10_000


@pytest.mark.parametrize("name", list(ROWS))
def test_transformers_5_gives_4_51_3s_ids(tokenizer, name: str) -> None:
    row = ROWS[name]
    ids, mask = tokenize_ids(tokenizer, [row["text"]], TABLE["text_len"])
    assert ids.shape == mask.shape == (1, TABLE["text_len"])
    length = int(mask.sum())
    assert ids[0, :length].tolist() == row["ids"]
    assert not ids[0, length:].any() and ids[0, length - 1] == 1  # eos, then zero padding


def test_raw_prompts_through_our_cleaning_match(tokenizer) -> None:
    # TextEncoder.tokenize cleans first (ftfy, html, whitespace): raw input -> the ids 4.51.3
    # gives for the officially cleaned text
    encoder = TextEncoder(nn.Identity(), tokenizer, text_len=TABLE["text_len"])
    for name, row in ROWS.items():
        if name.startswith("text_clean[") and name.endswith(".input"):
            cleaned = ROWS[name.replace(".input", ".cleaned")]
            ids, mask = encoder.tokenize([row["text"]])
            assert ids[0, : int(mask.sum())].tolist() == cleaned["ids"], name


def test_sentencepiece_itself_agrees_except_special_literals() -> None:
    # an independent check of the table: the slow SentencePiece model plus eos gives the same
    # ids, except where the HF tokenizers split special-token literals ("</s>") out of the text
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(FOLDER / "spiece.model"))
    differ = []
    for name, row in ROWS.items():
        ids = sp.encode(row["text"]) + [1]
        if len(ids) > TABLE["text_len"]:
            ids = ids[: TABLE["text_len"] - 1] + [1]
        if ids != row["ids"]:
            differ.append(name)
    assert differ == ["hostile.special_literals"]
    assert torch.tensor(ROWS["hostile.special_literals"]["ids"]).eq(1).sum() == 2  # "</s>" + eos
