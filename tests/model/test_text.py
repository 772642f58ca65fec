"""model/text.py: the T5 wrapper's text cleaning (the `regex` package's notion of whitespace)."""

from __future__ import annotations

import sys

import pytest

from model.text import clean_text, whitespace_clean


def test_whitespace_clean_collapses_unicode_whitespace():
    assert whitespace_clean(" a\t\n b\u00a0\u2003c\u3000 ") == "a b c"


def test_whitespace_clean_keeps_information_separators():
    """U+001C..U+001F match `re`'s \\s but are not Unicode White_Space (the official `regex`
    \\s): the official cleaner keeps them inside the text; str.strip() still trims the ends."""
    assert whitespace_clean("a\x1cb \x1d c") == "a\x1cb \x1d c"
    assert whitespace_clean("\x1fa b\x1e") == "a b"
    assert clean_text("a\x1cb") == "ab"  # ftfy drops the control characters first


def test_whitespace_class_equals_regex_package():
    regex = pytest.importorskip("regex")
    from model.text import _WHITESPACE

    every = "".join(map(chr, range(sys.maxunicode + 1)))
    ours = {i for m in _WHITESPACE.finditer(every) for i in range(m.start(), m.end())}
    official = {m.start() for m in regex.finditer(r"\s", every)}
    assert ours == official, sorted(map(hex, ours ^ official))
