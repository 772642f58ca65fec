"""Prompt -> per-prompt umT5 embeddings, as Ovi's T5 wrapper computes them.

Shapes: token ids and mask `[B, text_len]`, hidden states `[B, text_len, dim]`, and one context
`[len_b, dim]` per prompt, where len_b is the number of real tokens (eos included). Padded rows
are computed too (the mask only hides keys) and then dropped.

The network is transformers' `UMT5EncoderModel` (built and loaded by `model/convert/umt5.py`); the
tokenizer is the umT5 SentencePiece tokenizer (`google/umt5-xxl` in the Wan2.2-TI2V-5B
checkpoint). For the random-weight `tiny` preset, `build_tiny_tokenizer` trains a small
SentencePiece model offline in a few milliseconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Tokenizer

from ..text import clean_text

# Special ids of the umT5 vocabulary (the tiny tokenizer uses the same ones).
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

# The tiny tokenizer's training text: a few lines in the register of video prompts.
_TINY_CORPUS: tuple[str, ...] = (
    "A woman with short hair speaks to the camera in a quiet, sunlit room.",
    "A man plays an acoustic guitar and sings a slow song on a wooden porch.",
    "Two friends laugh while walking along the beach at sunset.",
    "The quick brown fox jumps over the lazy dog near the old barn.",
    "A cat sits on the windowsill and watches the rain fall outside.",
    "Audio: soft piano music, distant thunder, and the hum of a city street.",
    "Close-up of a chef chopping vegetables; the knife taps on the board.",
    "An old car drives down a dusty road under a bright blue sky.",
    "Children play football in a park while birds sing in the trees.",
    "<S>Hello, how are you today?<E> she asks with a warm smile.",
)


def load_tokenizer(directory: Path | str) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `directory` (e.g. `Wan2.2-TI2V-5B/google/umt5-xxl`), offline."""
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def build_tiny_tokenizer(directory: Path | str, vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a SentencePiece unigram model of at most `vocab_size` pieces; save it as T5's.

    Deterministic: the same corpus and settings on one thread give the same model. Ids follow
    umT5 (pad 0, eos 1, unk 2, no bos). The result loads with `load_tokenizer(directory)`.
    """
    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TINY_CORPUS),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        hard_vocab_limit=False,  # a larger request than the corpus allows yields fewer pieces
        num_threads=1,
        minloglevel=2,
    )
    spiece = directory / "spiece.model"
    spiece.write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(str(directory), extra_ids=0, local_files_only=True)
    tokenizer.save_pretrained(str(directory))
    return load_tokenizer(directory)


def tokenize_ids(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], text_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts (already cleaned) -> (ids, mask) [B, text_len] int64, with the official call (Wan's
    umT5 tokenizer wrapper): eos appended, truncated and zero-padded to `text_len`.

    transformers 5's `AutoTokenizer` gives the ids 4.51.3 (the official pin) gives on a folder
    with umt5-xxl's files: `tests/model/test_tokenizer_parity.py` checks a recorded table."""
    batch = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=text_len,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return batch["input_ids"], batch["attention_mask"]


def split_by_mask(hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[B, L, dim] hidden states -> B contexts [len_b, dim], len_b = number of mask ones."""
    lengths = mask.gt(0).sum(dim=1).tolist()
    return [h[:n] for h, n in zip(hidden, lengths, strict=True)]


class TextEncoder(nn.Module):
    """umT5 encoder + tokenizer: `encode(prompts)` returns one unpadded context per prompt."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase | None = None,
        text_len: int = 512,
        *,
        tokenizer_dir: Path | str | None = None,
    ) -> None:
        """`tokenizer`, or `tokenizer_dir` to load one from (offline); with neither, only
        `encode_ids` works (token ids in, as the conformance case gives them)."""
        super().__init__()
        if tokenizer is not None and tokenizer_dir is not None:
            raise ValueError("pass either tokenizer or tokenizer_dir, not both")
        if tokenizer_dir is not None:
            tokenizer = load_tokenizer(tokenizer_dir)
        # 1. the tokenizer: cleaned prompts -> ids and mask, padded to text_len
        self.tokenizer = tokenizer
        self.text_len = text_len
        # 2. the encoder: transformers UMT5EncoderModel (or anything with its forward)
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """1. Cleaned prompts -> (ids, mask), each [B, text_len] int64, padded with 0 after eos."""
        if self.tokenizer is None:
            raise ValueError("this TextEncoder has no tokenizer; pass token ids to encode_ids()")
        return tokenize_ids(self.tokenizer, [clean_text(p) for p in prompts], self.text_len)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """2. ids, mask [B, L] -> hidden states [B, L, dim] for every position (padding included)."""
        device = self.device
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device))
        return out.last_hidden_state

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """ids, mask [B, L] -> B contexts [len_b, dim] (the real-token rows only)."""
        return split_by_mask(self(ids, mask), mask)

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> B contexts [len_b, dim], len_b <= text_len (eos included)."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        ids, mask = self.tokenize(prompts)  # 1. tokenizer
        return self.encode_ids(ids, mask)  # 2. encoder, real-token rows only
