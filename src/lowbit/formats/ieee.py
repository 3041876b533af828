"""The IEEE formats torch stores natively (float32, float16, bfloat16), used mostly for scales.

Their codes are the values themselves in the matching torch dtype; encoding is torch's cast,
which rounds to nearest even and overflows to Inf. With ``saturate=True`` overflow clamps to the
largest finite value instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lowbit.formats.base import Format, Kind, as_float32


@dataclass(frozen=True)
class IEEEFloat(Format):
    """A torch floating dtype as a format."""

    dtype: torch.dtype = torch.float16

    kind: ClassVar[Kind] = "float"

    @property
    def storage_dtype(self) -> torch.dtype:
        return self.dtype

    def all_codes(self) -> torch.Tensor:
        """Every bit pattern in order (``0 .. 2**bits - 1``) viewed as the dtype; 16-bit only."""
        if self.bits > 16:
            raise ValueError(f"{self.name} has 2**{self.bits} codes, too many to enumerate")
        codes = torch.arange(2**self.bits, dtype=torch.int32, device="cpu")
        return codes.to(torch.int16).view(self.dtype)

    def encode(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        x = as_float32(x)
        if saturate:
            fmax = torch.finfo(self.dtype).max
            x = torch.where(torch.isnan(x), x, x.clamp(-fmax, fmax))
            # values just above max that the cast would round down stay as they are: clamp only
            # moves values that would overflow to Inf
        return x.to(self.dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(self.dtype).to(torch.float32)

    @property
    def max(self) -> float:
        return float(torch.finfo(self.dtype).max)

    @property
    def min(self) -> float:
        return -self.max

    @property
    def smallest_positive(self) -> float:
        info = torch.finfo(self.dtype)
        return float(info.smallest_normal) * float(info.eps)  # the smallest subnormal

    @property
    def levels(self) -> int:
        """Distinct finite values: all codes less Inf/NaN, with -0 and +0 counted once."""
        exp_bits = {torch.float16: 5, torch.bfloat16: 8, torch.float32: 8}[self.dtype]
        man_bits = self.bits - 1 - exp_bits
        non_finite = 2 * 2**man_bits  # the top exponent, both signs
        return 2**self.bits - non_finite - 1
