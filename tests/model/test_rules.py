"""model/convert/rules.py: anchored, one-to-one, reversible rename rules."""

from __future__ import annotations

import pytest
import torch

from model.convert.rules import KeyRules
from model.loading import CheckpointMismatchError

PATTERNS = {"s": r"\d+", "w": "weight|bias"}


def test_a_rule_that_drops_a_part_is_rejected():
    with pytest.raises(ValueError, match="does not keep every part"):
        KeyRules([("a.{s}.{w}", "b.{w}")], PATTERNS)


def test_overlapping_rules_are_rejected():
    rules = KeyRules([("a.{s}.{w}", "b.{s}.{w}"), ("a.0.{w}", "c.{w}")], PATTERNS)
    assert rules.rename("a.1.bias") == "b.1.bias"
    with pytest.raises(ValueError, match="must be disjoint"):
        rules.rename("a.0.bias")


def test_rules_are_anchored_reversible_and_take_constants():
    rules = KeyRules([("x.{s}.{k}.{w}", "y.{s}.{w}")], PATTERNS, constants={"k": 2})
    assert len(rules) == 1
    assert rules.rename("x.3.2.weight") == "y.3.weight"
    assert rules.rename("y.3.weight", reverse=True) == "x.3.2.weight"
    assert rules.rename("x.3.1.weight") is None  # the constant is part of the pattern
    assert rules.rename("x.3.2.weight.extra") is None and rules.rename("px.3.2.bias") is None


def test_convert_names_unknown_and_colliding_keys():
    rules = KeyRules([("a.{s}.{w}", "b.{w}.{s}")], PATTERNS)
    t = torch.zeros(1)
    assert rules.convert({"a.0.bias": t}, "f")["b.bias.0"] is t  # renamed, never copied
    with pytest.raises(CheckpointMismatchError, match=r"f.*a\.x\.bias") as err:
        rules.convert({"a.0.bias": t, "a.x.bias": t}, "f")
    assert err.value.unexpected == ["a.x.bias"]
