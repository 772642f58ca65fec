"""Prompt text handling: per-variant prompt formatting and the T5 wrapper's text cleaning."""

from __future__ import annotations

import html
import re

import ftfy

# Ovi 1.0 (720x720_5s) was trained on "<AUDCAP>caption<ENDAUDCAP>": everything from "Audio:" to
# the end of the prompt becomes the caption. Ovi 1.1 (960x960_*) was trained on "Audio: caption".
# Both matches are case-sensitive and let "." cross newlines.
_AUDIO_COLON = re.compile(r"Audio:\s*(.*)", re.DOTALL)
_AUDCAP = re.compile(r"<AUDCAP>(.*?)<ENDAUDCAP>", re.DOTALL)
# The official cleaner uses the `regex` package, whose \s is Unicode White_Space: Python's `re`
# \s also matches the separators U+001C..U+001F, which are not White_Space. Otherwise equal.
_WHITESPACE = re.compile(r"[^\S\x1c-\x1f]+")


def format_prompt(prompt: str, style: str) -> str:
    """Rewrite the audio caption of a positive prompt into the variant's trained format."""
    if style == "audcap":
        return _AUDIO_COLON.sub(r"<AUDCAP>\1<ENDAUDCAP>", prompt)
    if style == "audio_colon":
        return _AUDCAP.sub(r"Audio: \1", prompt)
    raise ValueError(f"unknown prompt style {style!r} (expected 'audcap' or 'audio_colon')")


def basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def clean_text(text: str) -> str:
    """What Ovi's T5 wrapper feeds the tokenizer (`clean='whitespace'`)."""
    return whitespace_clean(basic_clean(text))
