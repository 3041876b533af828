"""Lookup-table formats: a code indexes a fixed list of values (NF4, bitsandbytes' FP4).

Encoding picks the nearest value; an exact tie between two values goes to the one closer to
zero (ties have probability zero for real weights, but the rule is fixed so encoding is
deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from lowbit.formats.base import Format, Kind, as_float32


@dataclass(frozen=True)
class Codebook(Format):
    """``2**bits`` values; ``values[c]`` is the value of code ``c``."""

    values: tuple[float, ...] = ()

    kind: ClassVar[Kind] = "codebook"

    def __post_init__(self) -> None:
        if len(self.values) != 2**self.bits:
            raise ValueError(f"{self.name}: {len(self.values)} values for {self.bits} bits")

    @cached_property
    def table(self) -> torch.Tensor:
        """float32 value of every code, indexed by code."""
        return torch.tensor(self.values, dtype=torch.float32, device="cpu")

    @cached_property
    def _sorted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Distinct values sorted, their codes, float32 thresholds between neighbours and
        whether each threshold is the exact midpoint (a tie) or just below it.

        The midpoint of two float32 values may need one bit more than float32 has; the
        threshold is then the largest float32 below it, so ``x > threshold`` still means "nearer
        the upper value" for every float32 ``x``.
        """
        order = torch.argsort(self.table.double(), stable=True)
        values = self.table[order].double()
        keep = torch.ones_like(values, dtype=torch.bool)
        keep[1:] = values[1:] != values[:-1]  # -0 and +0 (bnb FP4): keep the first code
        values, codes = values[keep], order[keep]
        mid = (values[:-1] + values[1:]) / 2  # exact in float64
        below = mid.to(torch.float32)
        below = torch.where(below.double() > mid, torch.nextafter(below, below.new_tensor(
            -float("inf"))), below)
        exact = below.double() == mid
        return values.to(torch.float32), codes.to(torch.uint8), below, exact

    def encode(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        x = self._check(x, saturate)
        codes = self.on_device("_sorted", x.device)[1]
        cell_below, cell_threshold, cell_tie_up = self.on_device("_cells", x.device)
        lo, hi = self.min, self.max
        n_cells = cell_threshold.numel()
        xc = x.clamp(lo, hi)
        cell = ((xc - lo) * ((n_cells - 1) / (hi - lo))).to(torch.int32).reshape(-1)
        t = cell_threshold.index_select(0, cell).view(x.shape)
        upper = (xc > t) | ((xc == t) & cell_tie_up.index_select(0, cell).view(x.shape))
        index = cell_below.index_select(0, cell).view(x.shape) + upper
        return codes.index_select(0, index.reshape(-1)).view(x.shape)

    def encode_reference(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        """The plain implementation (search over the thresholds); ``encode`` must equal it."""
        x = self._check(x, saturate)
        values, codes, threshold, exact = self.on_device("_sorted", x.device)
        # searchsorted(right=False) sends x == threshold[i] to values[i] (the lower one): right
        # unless it is an exact tie on the negative side, which goes up, towards zero
        idx = torch.searchsorted(threshold, x.contiguous())
        last = idx.clamp(max=threshold.numel() - 1)
        tie_up = (x == threshold[last]) & exact[last] & (threshold[last] < 0)
        idx = idx + tie_up.to(idx.dtype)
        return codes[idx]

    def _check(self, x: torch.Tensor, saturate: bool) -> torch.Tensor:
        x = as_float32(x)
        if torch.isnan(x).any():
            raise ValueError(f"{self.name} has no NaN: cannot encode NaN")
        if not saturate and ((x < self.min) | (x > self.max)).any():
            raise ValueError(f"value outside the {self.name} range [{self.min}, {self.max}]")
        return x

    @cached_property
    def _cells(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A uniform grid of cells over [min, max] with at most one threshold each, so that
        encoding is one comparison: for each cell, the sorted index of the value below its
        threshold, the threshold (+inf where none), and whether an exact tie there rounds up.

        The cell of ``x`` is a monotone float32 function of ``x``, so ``x`` below a threshold
        never lands in a later cell than the threshold's and vice versa.
        """
        values, _, threshold, exact = self._sorted
        lo, hi = float(values[0]), float(values[-1])
        gap = float((threshold[1:] - threshold[:-1]).min())
        n_cells = 2 ** max(4, math.ceil(math.log2(4 * (hi - lo) / gap)))
        cell_of = ((threshold - lo) * ((n_cells - 1) / (hi - lo))).to(torch.int64)
        assert torch.unique(cell_of).numel() == threshold.numel(), "cells too coarse"
        # thresholds in earlier cells
        below = torch.searchsorted(cell_of, torch.arange(n_cells, device="cpu"))
        cell_threshold = torch.full((n_cells,), math.inf, device="cpu")
        cell_threshold[cell_of] = threshold
        tie_up = torch.zeros(n_cells, dtype=torch.bool, device="cpu")
        tie_up[cell_of] = exact & (threshold < 0)
        return below, cell_threshold, tie_up

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.on_device("table", codes.device)[codes.long()]


# NF4 as bitsandbytes and QLoRA ship it (the float32 constants of bitsandbytes' kernels).
# They are the quantiles that ``normal_float_levels`` derives, rounded by the original
# float32/scipy computation; the derivation agrees to 2e-7 (tests/formats/test_codebook.py).
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def normal_float_levels(bits: int = 4, offset: float = 0.9677083) -> tuple[float, ...]:
    """QLoRA's NormalFloat levels: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.

    2**(bits-1) positive levels and 2**(bits-1) - 1 negative ones, from the normal quantiles at
    evenly spaced probabilities between ``offset`` and 1/2 (Dettmers et al. 2023, appendix E).
    """
    n_pos, n_neg = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    quantile = torch.special.ndtri
    pos = quantile(torch.linspace(offset, 0.5, n_pos + 1, dtype=torch.float64, device="cpu")[:-1])
    neg = -quantile(torch.linspace(offset, 0.5, n_neg + 1, dtype=torch.float64, device="cpu")[:-1])
    values = torch.cat([pos, pos.new_zeros(1), neg]).sort().values
    values = values / values.abs().max()
    return tuple(float(v) for v in values.to(torch.float32))


def bnb_fp4_values() -> tuple[float, ...]:
    """bitsandbytes' FP4: E2M1 magnitudes {0, 1/16, 2, 3, 4, 6, 8, 12} / 12 in its own code order.

    bitsandbytes lays the 3 magnitude bits out as exponent-then-mantissa with a special
    subnormal; the top bit is the sign. Code order of the magnitudes (codes 0..7):
    0, 1/16, 8, 12, 4, 6, 2, 3 (all divided by 12).
    """
    magnitudes = (0.0, 1 / 16, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
    positive = tuple(m / 12 for m in magnitudes)
    return positive + tuple(-m for m in positive)
