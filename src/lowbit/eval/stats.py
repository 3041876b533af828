"""Small statistics for measurements: Wilson score intervals and streaming means."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Newcombe 1998, method 3).

    ``p ± z·sqrt(p(1-p)/n + z²/4n²)``, centred at ``(p + z²/2n)``, all divided by ``1 + z²/n``.
    Unlike the normal approximation it stays inside [0, 1] and holds near 0 and 1 and for small n.
    """
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must lie in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact endpoints at the extremes (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass
class RunningMean:
    """Streaming mean and its standard error, from float64 sums and sums of squares."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, total: float, total_sq: float, n: int) -> None:
        """Add a batch given its sum, its sum of squares and its size."""
        self.n += n
        self.total += total
        self.total_sq += total_sq

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def stderr(self) -> float:
        """Standard error of the mean, assuming independent samples (as llama.cpp does)."""
        if self.n < 2:
            return math.nan
        var = max(self.total_sq / self.n - self.mean**2, 0.0) * self.n / (self.n - 1)
        return math.sqrt(var / self.n)
