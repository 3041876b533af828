"""The element format of a scheme as data: its bit fields, every value, the spacing between them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.core.scheme import Scheme
from lowbit.formats import Format, IntFormat
from lowbit.formats.codebook import Codebook
from lowbit.formats.minifloat import MiniFloat


@dataclass(frozen=True)
class FormatView:
    """One element format: ``fields`` are (label, bits) from the most significant bit down;
    ``values`` every distinct finite value (sorted); ``spacing[i]`` the gap from ``values[i]``
    to ``values[i+1]``; ``description`` a sentence on how a code becomes a value."""

    name: str
    kind: str
    bits: int
    fields: tuple[tuple[str, int], ...]
    values: np.ndarray
    spacing: np.ndarray
    description: str


def _fields(fmt: Format) -> tuple[tuple[tuple[str, int], ...], str]:
    if isinstance(fmt, IntFormat):
        how = ("two's complement integer" if fmt.signed else "unsigned integer")
        return ((f"integer ({how})", fmt.bits),), (
            f"{fmt.bits}-bit {how}: codes are the integers {fmt.qmin} .. {fmt.qmax}, "
            "evenly spaced; a weight is code x scale" + ("" if fmt.signed else " + zero"))
    if isinstance(fmt, MiniFloat):
        fields = ((("sign", 1),) if fmt.signed else ()) + (("exponent", fmt.exp_bits),)
        fields += (("mantissa", fmt.man_bits),) if fmt.man_bits else ()
        return fields, (
            f"minifloat: {int(fmt.signed)} sign, {fmt.exp_bits} exponent (bias {fmt.bias}) and "
            f"{fmt.man_bits} mantissa bits; value = (-1)^s x 2^(e-{fmt.bias}) x 1.m "
            f"({'with' if fmt.subnormals else 'no'} subnormals); the spacing doubles with each "
            "binade")
    if isinstance(fmt, Codebook):
        return ((f"index into {2 ** fmt.bits} values", fmt.bits),), (
            f"codebook: a {fmt.bits}-bit code indexes a fixed table of {2 ** fmt.bits} values")
    return ((fmt.name, fmt.bits),), f"{fmt.kind} format of {fmt.bits} bits"


def format_view(scheme: Scheme) -> FormatView:
    """The view of ``scheme``'s element format (what its codes mean before scaling)."""
    fmt = scheme.element_format
    values = fmt.finite_values.numpy().astype(np.float64)
    fields, description = _fields(fmt)
    return FormatView(name=fmt.name, kind=fmt.kind, bits=fmt.bits, fields=fields,
                      values=values, spacing=np.diff(values), description=description)
