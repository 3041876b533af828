"""Small IEEE-like floats: fp8 E4M3/E5M2, fp6 E2M3/E3M2, fp4 E2M1, and the E8M0 scale format.

Encoding rounds to nearest, ties to even, exactly as the OCP 8-bit and MX specifications and
``ml_dtypes`` do. Overflow and special values:

* ``saturate=True`` (default): values beyond the largest finite value and infinities become
  +-max; NaN becomes the format's NaN, and is an error for formats that have none.
* ``saturate=False``: what a plain ml_dtypes cast does: overflow gives Inf where the format has
  it, else NaN where it has it, else +-max (fp6/fp4 have neither). torch's casts agree except
  that torch (2.13, CPU) saturates overflow and Inf to +-448 for float8_e4m3fn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from lowbit.formats.base import Format, Kind, as_float32


@dataclass(frozen=True)
class MiniFloat(Format):
    """Sign (optional), ``exp_bits`` exponent bits with ``bias``, ``man_bits`` mantissa bits.

    ``nan``/``inf`` say how the top exponent is used: ``"ieee"`` reserves it for Inf and NaN
    (E5M2), ``"max_mantissa"`` uses only its all-ones mantissa for NaN (E4M3 "fn"), ``"all_ones"``
    uses only the all-ones code for NaN (E8M0), ``"none"`` keeps every code finite (fp6, fp4).
    """

    exp_bits: int = 4
    man_bits: int = 3
    bias: int = 7
    signed: bool = True
    specials: str = "none"  # "ieee" | "max_mantissa" | "all_ones" | "none"
    subnormals: bool = True

    kind: ClassVar[Kind] = "float"

    def __post_init__(self) -> None:
        if self.bits != int(self.signed) + self.exp_bits + self.man_bits:
            raise ValueError(f"{self.name}: sign + exponent + mantissa bits != {self.bits}")
        if self.specials not in ("ieee", "max_mantissa", "all_ones", "none"):
            raise ValueError(f"{self.name}: unknown specials {self.specials!r}")

    # --- the value of every code -------------------------------------------------------
    def _magnitude(self, e: int, m: int) -> float:
        """Value of exponent field ``e`` and mantissa field ``m``, ignoring specials."""
        if e == 0 and self.subnormals:
            return m * 2.0 ** (1 - self.bias - self.man_bits)
        return (1 + m / 2**self.man_bits) * 2.0 ** (e - self.bias)

    def _special(self, e: int, m: int) -> float | None:
        """Inf/NaN of the magnitude fields, or None for a finite code."""
        top_e = 2**self.exp_bits - 1
        top_m = 2**self.man_bits - 1
        if self.specials == "ieee" and e == top_e:
            return float("inf") if m == 0 else float("nan")
        if self.specials in ("max_mantissa", "all_ones") and e == top_e and m == top_m:
            return float("nan")
        return None

    @cached_property
    def table(self) -> torch.Tensor:
        """float32 value of every code, indexed by code."""
        values = []
        for code in range(2**self.bits):
            magnitude_bits = code & (2 ** (self.bits - int(self.signed)) - 1)
            e, m = magnitude_bits >> self.man_bits, magnitude_bits & (2**self.man_bits - 1)
            special = self._special(e, m)
            v = self._magnitude(e, m) if special is None else special
            negative = self.signed and code >> (self.bits - 1)
            values.append(-v if negative else v)
        return torch.tensor(values, dtype=torch.float64, device="cpu").to(torch.float32)

    @cached_property
    def _grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Positive finite magnitudes in order, the midpoints between neighbours (the last one
        towards the first value past max), whether a tie at each midpoint rounds up, and the
        code of +max. Consecutive magnitudes have consecutive codes."""
        max_code = self._max_code
        mags = self.table[: max_code + 1].double()
        ext = torch.cat([mags, mags.new_tensor([self._past_max])])
        mid = (ext[:-1] + ext[1:]) / 2
        # ties to even: with mantissa bits, the even code has an even mantissa; with none (E8M0)
        # the upper neighbour has the even significand (1.0 * 2^e vs 10.0 * 2^e), so round up.
        upper_codes = torch.arange(1, max_code + 2, device="cpu")
        tie_up = (upper_codes % 2 == 0) if self.man_bits > 0 else torch.ones_like(upper_codes,
                                                                                 dtype=torch.bool)
        return mid.to(torch.float32), tie_up, mags.to(torch.float32), max_code

    @property
    def has_nan(self) -> bool:
        return self.specials != "none"

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    def _nan_code(self) -> int:
        """Code used for +NaN (the sign bit is added for negative NaN)."""
        top_e = 2**self.exp_bits - 1
        if self.specials == "ieee":  # quiet NaN with the top mantissa bit set, as ml_dtypes
            return (top_e << self.man_bits) | (2 ** (self.man_bits - 1))
        return (top_e << self.man_bits) | (2**self.man_bits - 1)

    # --- encode / decode ---------------------------------------------------------------
    def _round_magnitude(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes of the nearest magnitudes to ``a >= 0`` (ties to even) and where it overflowed."""
        mid, tie_up, _, max_code = self.on_device("_grid", a.device)
        idx = torch.searchsorted(mid, a.contiguous())
        last = idx.clamp(max=mid.numel() - 1)
        idx = idx + ((a == mid[last]) & tie_up[last]).to(idx.dtype)
        return idx.clamp(max=max_code), idx > max_code

    def encode(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        return self._encode(x, saturate, fast=True)

    def encode_reference(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        """The plain implementation (nearest grid value by search); ``encode`` must equal it."""
        return self._encode(x, saturate, fast=False)

    def _encode(self, x: torch.Tensor, saturate: bool, fast: bool) -> torch.Tensor:
        x = as_float32(x)
        max_code = self._grid[3]
        a = x.abs()
        round_magnitude = self._round_magnitude_fast if fast else self._round_magnitude
        codes, overflow = round_magnitude(a)  # overflow includes +-Inf
        if not saturate and overflow.any():
            if self.has_inf:
                codes = torch.where(overflow, max_code + 1, codes)  # the Inf code follows max
            elif self.has_nan:
                codes = torch.where(overflow, self._nan_code(), codes)
        nan = torch.isnan(x)
        if nan.any():
            if not self.has_nan:
                raise ValueError(f"{self.name} has no NaN: cannot encode NaN")
            codes = torch.where(nan, self._nan_code(), codes)
        if self.signed:
            codes = codes | (torch.signbit(x).to(codes.dtype) << (self.bits - 1))
        elif (x < 0).any():
            raise ValueError(f"{self.name} is unsigned: cannot encode negative values")
        return codes.to(torch.uint8)

    def _round_magnitude_fast(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same result as :meth:`_round_magnitude`, by float32 bit arithmetic.

        With ``e`` the exponent of ``a`` (at least the smallest normal exponent ``emin``),
        ``r = round_half_even(a / 2**(e - M))`` is exact, and the code is
        ``(e - emin) * 2**M + r``: within a binade ``r`` runs over ``2**M .. 2**(M+1)``, and in
        the subnormal range over ``0 .. 2**M``, so carries into the next binade fall out.
        """
        if not self.subnormals:
            return self._round_magnitude(a)
        max_code = self._max_code
        emin = 1 - self.bias
        a = a.clamp(max=self._past_max)  # Inf -> one step past max: overflows like it
        e = ((a.view(torch.int32) >> 23) - 127).clamp_(min=emin)  # floor(log2 a) for normals
        step = ((127 + self.man_bits - e) << 23).view(torch.float32)  # 2**(M - e), exact
        r = torch.round(a * step)
        codes = ((e - emin) << self.man_bits) + r.to(torch.int32)
        overflow = codes > max_code
        return codes.clamp_(max=max_code), overflow

    @cached_property
    def _max_code(self) -> int:
        """Code of the largest finite positive value."""
        n_mag = 2 ** (self.bits - int(self.signed))
        return int(torch.isfinite(self.table[:n_mag]).nonzero().max())

    @cached_property
    def _past_max(self) -> float:
        """The value one step past max on the unbounded grid (next mantissa or next binade)."""
        max_code = self._max_code
        e, m = max_code >> self.man_bits, max_code & (2**self.man_bits - 1)
        if m + 1 < 2**self.man_bits:
            return self._magnitude(e, m + 1)
        return self._magnitude(e + 1, 0)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.on_device("table", codes.device)[codes.long()]


@dataclass(frozen=True)
class E8M0(MiniFloat):
    """The MX spec's scale format: 2**(code - 127) for codes 0..254, NaN at 255; no sign, no zero.

    Encoding rounds to the nearest power of two (a tie, 1.5 * 2**e, rounds up as ``ml_dtypes``
    does). Zero, negative numbers and NaN give the NaN code, values below 2**-127 give code 0,
    and values above 2**127 give 2**127 (``saturate=True``) or NaN.
    """

    exp_bits: int = 8
    man_bits: int = 0
    bias: int = 127
    signed: bool = False
    specials: str = "all_ones"
    subnormals: bool = False

    def encode(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        x = as_float32(x)
        # magnitudes start at 2^-127 (code 0), so anything smaller rounds to code 0
        codes, overflow = self._round_magnitude(x.abs())
        if not saturate:
            codes = torch.where(overflow, self._nan_code(), codes)
        bad = torch.isnan(x) | (x <= 0)
        codes = torch.where(bad, self._nan_code(), codes)
        return codes.to(torch.uint8)
