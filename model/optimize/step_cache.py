"""Step caching for the twin towers (opt-in, approximate): EasyCache-style, calibration-free.

Idea (EasyCache, Zhou et al. 2025; our own code): over the middle of a flow trajectory the DiT's
output changes about in proportion to its input, `||dy|| ~ k ||dx||`, with a "transformation
rate" k measured between the last two steps that ran. Per step the relative change of the
output is estimated as `k * ||x_i - x_{i-1}|| / ||y_last||` and accumulated since the last full
forward; while the accumulated estimate stays below the threshold, the forward is skipped and the
cached residual `y_last - x_last` of each pass is added to the new input instead.

Ovi's towers are fused block by block (each block of one tower attends to the other), so a
forward runs both towers or neither. The decision is per tower and joint: each tower's change
is estimated from its own latent (video [B, 48, F, h, w], audio [B, La, 20]) and its own k, and a
step is skipped only when BOTH towers are under the threshold (audio drives lip-sync, so a
quiet video tower alone never skips it).

Always run: the first `warmup` steps (k needs two forwards) and the last step. Threshold 0
never skips (the loop's outputs are bit-equal to no cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Outputs = list[tuple[torch.Tensor, torch.Tensor]]  # per pass: (video, audio) flow predictions


def _norm(x: torch.Tensor) -> float:
    return float(x.float().norm())


@dataclass
class ForwardCount:
    """DiT forwards of one clip: a pass of the model over one (batch of) input; a batched CFG
    forward counts as its two passes."""

    run: int = 0
    skipped: int = 0

    def as_metrics(self) -> dict[str, int]:
        return {"dit_forwards": self.run, "dit_forwards_skipped": self.skipped}


class StepCache:
    """Decides per step whether the DiT runs (`skip`), replays the cached residuals (`reuse`),
    and learns from each forward that ran (`store`)."""

    def __init__(self, threshold: float, steps: int, warmup: int = 2) -> None:
        if not threshold >= 0:
            raise ValueError(f"cache threshold must be >= 0, got {threshold!r}")
        self.threshold = threshold
        self.steps = steps
        self.warmup = max(warmup, 2)
        self._prev_in: tuple[torch.Tensor, torch.Tensor] | None = None  # x_{i-1}, every step
        self._last_in: tuple[torch.Tensor, torch.Tensor] | None = None  # at the last forward
        self._last_out: tuple[torch.Tensor, torch.Tensor] | None = None  # its first pass
        self._residuals: Outputs = []
        self._rate: tuple[float, float] | None = None  # k per tower
        self._acc = [0.0, 0.0]  # accumulated estimated change per tower

    def skip(self, i: int, video: torch.Tensor, audio: torch.Tensor) -> bool:
        """Whether step i (0-based) may reuse the cache instead of a forward."""
        prev, self._prev_in = self._prev_in, (video, audio)
        if (
            self.threshold <= 0
            or i < self.warmup
            or i >= self.steps - 1
            or self._rate is None
            or prev is None
            or self._last_out is None
        ):
            return False
        for t, (x, x_prev, y_last) in enumerate(
            zip((video, audio), prev, self._last_out, strict=True)
        ):
            self._acc[t] += self._rate[t] * _norm(x - x_prev) / max(_norm(y_last), 1e-12)
        return max(self._acc) < self.threshold

    def reuse(self, video: torch.Tensor, audio: torch.Tensor) -> Outputs:
        """Each pass's output: the new input plus that pass's cached residual."""
        return [(video + rv, audio + ra) for rv, ra in self._residuals]

    def store(self, video: torch.Tensor, audio: torch.Tensor, outputs: Outputs) -> None:
        """After a forward ran on (video, audio): update k, the residuals, reset the sums."""
        out_v, out_a = outputs[0]
        if self._last_in is not None and self._last_out is not None:
            rates = []
            for x, y, x_last, y_last in zip(
                (video, audio), (out_v, out_a), self._last_in, self._last_out, strict=True
            ):
                dx = _norm(x - x_last)
                rates.append(_norm(y - y_last) / dx if dx > 0 else 0.0)
            self._rate = (rates[0], rates[1])
        self._last_in, self._last_out = (video, audio), (out_v, out_a)
        self._residuals = [(v - video, a - audio) for v, a in outputs]
        self._acc = [0.0, 0.0]
