"""The bench's sections: one registry, so a new figure is one decorated function.

A section is a function of the running `Bench` (`bench/run.py`) that fills some of its figures.
Register it with the figure keys it owns; `python -m bench --sections NAME` then runs it, the
JSON lists it (ok / failed / interrupted / not run, with the reason and its wall time), and its
keys are null with a note when it did not run::

    from bench.sections import section

    @section("my_thing", keys=("my_thing_ms",))
    def my_thing(bench) -> None:
        bench.figures["my_thing_ms"], _ = bench.clock.median(lambda: ...)

A section in its own file is imported by adding the module name to `PLUGINS` below (one line).
Order of registration is the order of the default plan (`--plan full`). This file imports
nothing heavy (no torch), so it can be read anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# modules that register sections of their own (imported by bench/run.py after the built-ins)
PLUGINS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    name: str
    keys: tuple[str, ...]  # the figures it owns (null + note unless it fills them)
    run: Callable[[Any], None]  # fn(bench) -> None


_REGISTRY: dict[str, Section] = {}


def section(
    name: str, keys: tuple[str, ...] | list[str] = (), *, replace: bool = False
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register `fn(bench)` as section `name` owning figure `keys` (see the module docstring).

    A name registered twice is a ValueError unless `replace=True`."""

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        if name in _REGISTRY and not replace:
            raise ValueError(f"bench section {name!r} is registered twice")
        if not name or "," in name:
            raise ValueError(f"bad bench section name {name!r}")
        _REGISTRY[name] = Section(name, tuple(keys), fn)
        return fn

    return register


def unregister(name: str) -> None:
    """Drop a section (tests register throw-away ones)."""
    _REGISTRY.pop(name, None)


def registered() -> dict[str, Section]:
    """Every section, in registration order."""
    return dict(_REGISTRY)
