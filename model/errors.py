"""Loading errors, importable without torch (the API process reports them too)."""

from __future__ import annotations

from pathlib import Path


class WeightFileMissingError(FileNotFoundError):
    """A weight file is not on disk; the message says how to fetch it."""

    def __init__(self, path: Path | str, fetch_hint: str | None = None) -> None:
        self.path = Path(path)
        hint = fetch_hint or "run `make weights` (or `ovi weights --variant <name>`) to download it"
        super().__init__(f"weight file not found: {self.path}; {hint}")


class CheckpointMismatchError(ValueError):
    """A state dict does not match the module it is loaded into."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        wrong_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.source = source
        self.missing = missing
        self.unexpected = unexpected
        self.wrong_shapes = wrong_shapes
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        if wrong_shapes:
            shown = [f"{k} (file {list(got)}, model {list(want)})" for k, got, want in wrong_shapes]
            parts.append(f"{len(wrong_shapes)} wrong shape(s): {_preview(shown)}")
        super().__init__(f"checkpoint {source} does not match the model: " + "; ".join(parts))


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
