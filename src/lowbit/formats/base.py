"""Format: how one number is stored in a few bits, and the registry of formats by name.

A format maps float32 values to integer *codes* (``encode``) and codes back to float32
(``decode``). Codes of formats of up to 8 bits are ``torch.uint8`` tensors holding the bit
pattern; the IEEE formats (float16, bfloat16, float32) use their own torch dtype as storage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch

Kind = Literal["int", "float", "codebook"]


@dataclass(frozen=True)
class Format(ABC):
    """A number format: a name, a bit width and exact encode/decode."""

    name: str
    bits: int

    kind: ClassVar[Kind]

    @abstractmethod
    def encode(self, x: torch.Tensor, *, saturate: bool = True) -> torch.Tensor:
        """Round ``x`` (converted to float32) to the nearest representable value; return codes."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the float32 values of ``codes``."""

    @property
    def storage_dtype(self) -> torch.dtype:
        """The torch dtype that holds this format's codes."""
        return torch.uint8

    @cached_property
    def finite_values(self) -> torch.Tensor:
        """Every distinct finite value (``-0`` and ``+0`` counted once), sorted, float64."""
        values = self.decode(self.all_codes()).double()
        values = values[torch.isfinite(values)] + 0.0  # + 0.0 turns -0 into +0
        return torch.unique(values)

    @property
    def max(self) -> float:
        """Largest finite value."""
        return float(self.finite_values[-1])

    @property
    def min(self) -> float:
        """Smallest finite value (0 or more for unsigned formats)."""
        return float(self.finite_values[0])

    @property
    def smallest_positive(self) -> float:
        """Smallest value greater than zero (a subnormal where the format has them)."""
        values = self.finite_values
        return float(values[values > 0][0])

    @property
    def levels(self) -> int:
        """Number of distinct finite values."""
        return int(self.finite_values.numel())

    def all_codes(self) -> torch.Tensor:
        """Every code of the format, in order (``0 .. 2**bits - 1``)."""
        return torch.arange(2**self.bits, dtype=torch.int64, device="cpu").to(self.storage_dtype)

    def on_device(self, attr: str, device: torch.device) -> Any:
        """``self.<attr>`` (a cached CPU tensor, or a tuple of tensors and numbers) on ``device``,
        copied once per device so decode and encode run where the codes are."""
        cache: dict[tuple[str, torch.device], Any] = self.__dict__.setdefault("_per_device", {})
        key = (attr, torch.device(device))
        value = cache.get(key)
        if value is None:
            value = getattr(self, attr)
            if isinstance(value, tuple):
                value = tuple(_to(v, device) for v in value)
            else:
                value = _to(value, device)
            cache[key] = value
        return value


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the registry under its name (names are unique)."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"format {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str | Format) -> Format:
    """Look up a format by name; the error lists the valid names."""
    if isinstance(name, Format):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown format {name!r}; valid formats: {', '.join(sorted(_REGISTRY))}"
        ) from None


def format_names() -> list[str]:
    """Names of all registered formats, in registration order."""
    return list(_REGISTRY)


def as_float32(x: torch.Tensor, what: str = "input") -> torch.Tensor:
    """Return ``x`` as float32, rejecting integer and complex tensors with a clear error."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float32)
