"""ggml's legacy 32-element block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Value formulas (d, m are the block's fp16 fields read as float32; q the element's code):
    Q8_0: value = d * q,      q in [-128, 127]   (the quantizer itself uses [-127, 127])
    Q4_0: value = d * q,      q in [-8, 7]       (stored as the nibble q + 8)
    Q4_1: value = d * q + m,  q in [0, 15]
    Q5_0: value = d * q,      q in [-16, 15]     (stored as 5 bits q + 16)
    Q5_1: value = d * q + m,  q in [0, 31]
each product and sum rounded to float32 in that order. Quantizers follow
`quantize_row_*_ref` in ggml-quants.c; the `pack_*` functions write already-chosen codes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .layout import QK_LEGACY, get_layout, join_blocks, split_blocks
from .numerics import c_float_to_int8, f32, round_half_away, safe_div, to_f16

LEGACY_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")

# Signed code range of each type in the formulas above, and the bias added to store it.
CODE_RANGE = {"Q8_0": (-128, 127), "Q4_0": (-8, 7), "Q4_1": (0, 15), "Q5_0": (-16, 15),
              "Q5_1": (0, 31)}
_STORE_BIAS = {"Q8_0": 0, "Q4_0": 8, "Q4_1": 0, "Q5_0": 16, "Q5_1": 0}
_HAS_MIN = {"Q4_1", "Q5_1"}


class LegacyBlocks(NamedTuple):
    """Decoded fields of legacy blocks: fp16 scale d, fp16 offset m (or None), codes q."""

    d: np.ndarray  # float16 (nb,)
    m: np.ndarray | None  # float16 (nb,) for Q4_1/Q5_1
    q: np.ndarray  # int16 (nb, 32), in CODE_RANGE[qtype]


# ---------------------------------------------------------------- bit packing


def _pack_codes(qtype: str, stored: np.ndarray) -> dict[str, np.ndarray]:
    """Stored (non-negative, biased) codes (nb, 32) -> the qs/qh fields of the layout."""
    if qtype == "Q8_0":
        return {"qs": stored.astype(np.int16).astype(np.int8)}
    s = stored.astype(np.uint8)
    half = QK_LEGACY // 2
    # byte j: element j in the low nibble, element j + 16 in the high nibble. Q4 ORs the
    # low code unmasked, as C does (only matters for the garbage codes of degenerate blocks)
    low = s[:, :half] if qtype in ("Q4_0", "Q4_1") else s[:, :half] & 0x0F
    fields = {"qs": low | ((s[:, half:] & 0x0F) << 4)}
    if qtype in ("Q5_0", "Q5_1"):
        # bit j of the little-endian uint32 qh is bit 4 of element j
        fields["qh"] = np.packbits((s >> 4) & 1, axis=-1, bitorder="little")
    return fields


def _unpack_codes(qtype: str, fields: dict[str, np.ndarray]) -> np.ndarray:
    """Inverse of `_pack_codes`: stored codes (nb, 32) as int16."""
    if qtype == "Q8_0":
        return fields["qs"].astype(np.int16)
    qs = fields["qs"]
    stored = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)
    if qtype in ("Q5_0", "Q5_1"):
        hbit = np.unpackbits(fields["qh"], axis=-1, count=QK_LEGACY, bitorder="little")
        stored |= hbit.astype(np.int16) << 4
    return stored


def _blocks_from_parts(qtype: str, d16: np.ndarray, m16: np.ndarray | None,
                       stored: np.ndarray) -> np.ndarray:
    layout = get_layout(qtype)
    fields = {"d": d16, **_pack_codes(qtype, stored)}
    if qtype in _HAS_MIN:
        fields["m"] = m16
    return join_blocks(layout, **fields)


# ---------------------------------------------------------------- quantize / dequantize


def quantize_legacy(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """float32 (nb, 32) -> uint8 (nb, type_size), byte-identical to `quantize_row_*_ref`."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _quantize_legacy(blocks.astype(np.float32, copy=False), qtype)


def _quantize_legacy(x: np.ndarray, qtype: str) -> np.ndarray:
    m16 = None
    if qtype in ("Q8_0", "Q4_0", "Q5_0"):
        if qtype == "Q8_0":
            amax = np.abs(x).max(axis=1)
            d = amax / f32(127)
        else:
            # the signed value of largest magnitude (first one on ties); C starts from
            # max = +0.0, so an all-zero block (even of -0.0s) gets d = +0.0 / -8 = -0.0
            imax = np.abs(x).argmax(axis=1)
            vmax = np.take_along_axis(x, imax[:, None], axis=1)[:, 0]
            vmax = np.where(np.abs(vmax) > 0, vmax, f32(0.0))
            d = vmax / f32(-8 if qtype == "Q4_0" else -16)
        inv = safe_div(f32(1), d, d != 0)
        scaled = x * inv[:, None]
        if qtype == "Q8_0":
            stored = c_float_to_int8(round_half_away(scaled))
        else:
            nmax = 15 if qtype == "Q4_0" else 31
            bias = f32(8.5 if qtype == "Q4_0" else 16.5)
            stored = np.minimum(nmax, c_float_to_int8(scaled + bias))
    else:
        # first minimum / maximum in element order, as C's strict `<` / `>` scan picks it
        # (this decides the sign of a zero min, which numpy's min/max leave unspecified)
        vmin = np.take_along_axis(x, x.argmin(axis=1)[:, None], axis=1)[:, 0]
        vmax = np.take_along_axis(x, x.argmax(axis=1)[:, None], axis=1)[:, 0]
        nmax = 15 if qtype == "Q4_1" else 31
        d = (vmax - vmin) / f32(nmax)
        inv = safe_div(f32(1), d, d != 0)
        stored = (x - vmin[:, None]) * inv[:, None] + f32(0.5)
        if qtype == "Q4_1":
            stored = np.minimum(nmax, c_float_to_int8(stored))
        else:  # C has no MIN(31, .) here and converts to uint8_t
            stored = c_float_to_int8(stored).view(np.uint8)
        m16 = to_f16(vmin)
    # C stores MIN(nmax, (int8_t)v) in a uint8_t: keep the low byte
    return _blocks_from_parts(qtype, to_f16(d), m16, stored.astype(np.int16) & 0xFF)


def unpack_legacy(blocks: np.ndarray, qtype: str) -> LegacyBlocks:
    """uint8 (nb, type_size) -> the fp16 scale(s) and signed codes of each block."""
    fields = split_blocks(blocks, get_layout(qtype))
    q = _unpack_codes(qtype, fields) - np.int16(_STORE_BIAS[qtype])
    m = fields["m"][:, 0] if qtype in _HAS_MIN else None
    return LegacyBlocks(fields["d"][:, 0], m, q)


def dequantize_legacy(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """uint8 (nb, type_size) -> float32 (nb, 32) by the formulas in the module docstring."""
    d, m, q = unpack_legacy(blocks, qtype)
    y = d.astype(np.float32)[:, None] * q.astype(np.float32)
    if m is not None:
        y = y + m.astype(np.float32)[:, None]
    return y


# ---------------------------------------------------------------- packing chosen codes


def _pack(qtype: str, d: np.ndarray, m: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """Validate (..., n) codes and (..., n // 32) fp16 scales, then write the blocks."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise TypeError(f"{qtype} codes must be an integer array, got {q.dtype}")
    if q.ndim == 0 or q.shape[-1] % QK_LEGACY:
        raise ValueError(
            f"{qtype} codes: row length {q.shape[-1] if q.ndim else 0} is not a multiple "
            f"of the block size {QK_LEGACY}"
        )
    lo, hi = CODE_RANGE[qtype]
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"{qtype} codes must lie in [{lo}, {hi}], got [{q.min()}, {q.max()}]")
    nblk = q.shape[-1] // QK_LEGACY
    lead = q.shape[:-1]
    scales = {"d": d} if m is None else {"d": d, "m": m}
    for name, s in scales.items():
        s = np.asarray(s)
        if s.dtype != np.float16:
            raise TypeError(f"{qtype} {name} must be float16 (the stored scale), got {s.dtype}")
        if s.shape != (*lead, nblk):
            raise ValueError(f"{qtype} {name} has shape {s.shape}, expected {(*lead, nblk)}")
    stored = q.reshape(-1, QK_LEGACY).astype(np.int16) + np.int16(_STORE_BIAS[qtype])
    m16 = None if m is None else np.asarray(m).reshape(-1)
    out = _blocks_from_parts(qtype, np.asarray(d).reshape(-1), m16, stored)
    return out.reshape(*lead, -1)


def pack_q8_0(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q8_0 bytes (..., n // 32 * 34) from fp16 scales (..., n // 32) and codes in [-128, 127]."""
    return _pack("Q8_0", d, None, q)


def pack_q4_0(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_0 bytes (..., n // 32 * 18) from fp16 scales and codes in [-8, 7]; value = d * q."""
    return _pack("Q4_0", d, None, q)


def pack_q4_1(d: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_1 bytes (..., n // 32 * 20) from fp16 d, fp16 m and codes in [0, 15]; value = d*q + m."""
    return _pack("Q4_1", d, m, q)


def pack_q5_0(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q5_0 bytes (..., n // 32 * 22) from fp16 scales and codes in [-16, 15]; value = d * q."""
    return _pack("Q5_0", d, None, q)


def pack_q5_1(d: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q5_1 bytes (..., n // 32 * 24) from fp16 d, fp16 m and codes in [0, 31]; value = d*q + m."""
    return _pack("Q5_1", d, m, q)
