"""Integers of 2..8 bits, signed (two's complement) or unsigned.

Codes hold the bit pattern in the low ``bits`` bits of a uint8: a signed int4 value of -1 is
code ``0b1111``. Rounding is round-half-to-even, as ``torch.round``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lowbit.formats.base import Format, Kind, as_float32


@dataclass(frozen=True)
class IntFormat(Format):
    """A ``bits``-bit integer; ``signed`` selects two's complement over unsigned."""

    signed: bool = True

    kind: ClassVar[Kind] = "int"

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"integer formats have 2..8 bits, got {self.bits}")

    @property
    def qmin(self) -> int:
        """Smallest integer value."""
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest integer value."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def round(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        """Round to integer values (float32 result), half to even, clamped to the range."""
        x = as_float32(x)
        if torch.isnan(x).any():
            raise ValueError(f"{self.name} cannot encode NaN")
        if not saturate and ((x < self.qmin - 0.5) | (x > self.qmax + 0.5)).any():
            raise ValueError(f"value outside the {self.name} range [{self.qmin}, {self.qmax}]")
        return self.round_finite(x)

    def round_finite(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`round` without the checks, for callers that know ``x`` is finite float32."""
        return torch.round(x).clamp_(self.qmin, self.qmax)

    def encode(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        return self.to_codes(self.round(x, saturate=saturate))

    def to_codes(self, q: torch.Tensor) -> torch.Tensor:
        """Bit patterns of integer values ``q`` (already in range)."""
        if self.signed:  # int8 -> uint8 keeps the two's complement bits; mask to the width
            return q.to(torch.int8).view(torch.uint8) & (2**self.bits - 1)
        return q.to(torch.uint8)

    def decode_int(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer values (int16) of ``codes``, sign-extended for signed formats."""
        q = codes.to(torch.int16) & (2**self.bits - 1)
        if self.signed:
            q = torch.where(q > self.qmax, q - 2**self.bits, q)
        return q

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_int(codes).to(torch.float32)
