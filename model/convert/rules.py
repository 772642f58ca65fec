"""Anchored, one-to-one rename rules between an official key space and a module's key space.

A rule is a pair of templates, `("blocks.{n}.attn.{p}.weight", "encoder.block.{n}...{p}.weight")`.
`{name}` is a placeholder whose regex the family gives (`{"n": r"\\d+", "p": "[qkvo]"}`); a
template is matched with `fullmatch`, so every rule is anchored at both ends. Both sides must
hold the same placeholders (nothing captured is dropped), so the table is reversible: the same
rules rename official -> module and back. A key that no rule matches, a key two rules match
(order would then matter) and two keys landing on one name are errors that name the keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from ..loading import CheckpointMismatchError, StateDict

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _compile(template: str, patterns: Mapping[str, str]) -> re.Pattern[str]:
    r"""Template `a.{s}.b` -> regex `a\.(?P<s>\d+)\.b` (used with fullmatch: anchored)."""
    parts = _PLACEHOLDER.split(template)  # literal, name, literal, name, ..., literal
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{patterns[part]})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


class KeyRules:
    """Anchored, one-to-one rename rules between the official and the module key spaces.

    templates: (official, module) template pairs. patterns: placeholder -> regex. constants:
    placeholders fixed per config (written as their value on both sides, captured by neither).
    """

    def __init__(
        self,
        templates: Iterable[tuple[str, str]],
        patterns: Mapping[str, str],
        constants: Mapping[str, int] | None = None,
    ) -> None:
        fixed = {name: str(value) for name, value in (constants or {}).items()}
        patterns = {**patterns, **{name: re.escape(value) for name, value in fixed.items()}}
        self._fixed = fixed
        self._rules: dict[bool, list[tuple[re.Pattern[str], str]]] = {False: [], True: []}
        for official, ours in templates:
            names_o = set(_PLACEHOLDER.findall(official)) - set(fixed)
            names_d = set(_PLACEHOLDER.findall(ours)) - set(fixed)
            if names_o != names_d:  # a captured part would be dropped: not one-to-one
                raise ValueError(f"rule {official!r} -> {ours!r} does not keep every part")
            self._rules[False].append((_compile(official, patterns), ours))
            self._rules[True].append((_compile(ours, patterns), official))

    def __len__(self) -> int:
        return len(self._rules[False])

    def rename(self, key: str, *, reverse: bool = False) -> str | None:
        """The other name of `key` (official -> module, or back), or None if no rule matches."""
        hits = [(m, t) for p, t in self._rules[reverse] if (m := p.fullmatch(key)) is not None]
        if len(hits) > 1:  # overlapping rules would make the result depend on their order
            raise ValueError(
                f"{key!r} matches {len(hits)} rename rules; the table must be disjoint"
            )
        if not hits:
            return None
        match, target = hits[0]
        return target.format_map({**self._fixed, **match.groupdict()})

    def convert(
        self, state: Mapping[str, torch.Tensor], source: str, *, reverse: bool = False
    ) -> StateDict:
        """Rename every key of `state` (tensors untouched); unknown or colliding keys raise
        `CheckpointMismatchError` naming them and `source`."""
        out: StateDict = {}
        unknown: list[str] = []
        for key, value in state.items():
            new_key = self.rename(key, reverse=reverse)
            if new_key is None:
                unknown.append(key)
            elif new_key in out:
                raise CheckpointMismatchError(source, [], [f"{key} (also maps to {new_key})"], [])
            else:
                out[new_key] = value
        if unknown:
            raise CheckpointMismatchError(source, [], sorted(unknown), [])
        return out
