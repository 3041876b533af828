"""Float32 arithmetic that reproduces ggml's C reference code bit for bit.

ggml's quantizers run in float32 with sequential (left-to-right) accumulation; numpy's
`sum` uses pairwise summation and would change the last bit, which can flip a rounding
decision and so a byte. Everything here keeps float32 and C's operation order.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in order, as C's `float s = 0; for (i...) s += a[i];` does."""
    acc = np.zeros(a.shape[1:], dtype=np.float32)
    for row in a:
        acc += row
    return acc


def seqsum_from_first(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in order, starting from a[0] (C: `float s = a[0]; for (i=1...)`)."""
    acc = a[0].astype(np.float32, copy=True)
    for row in a[1:]:
        acc += row
    return acc


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's `nearest_int`, bit for bit: add 1.5*2^23 in float32 and read the low mantissa.

    Equals round-half-to-even for |v| <= 4194303; outside that range (which C only asserts
    against in debug builds) it reproduces C's wrapped result instead of saturating.
    """
    val = np.add(v, f32(12582912.0), dtype=np.float32)
    bits = np.atleast_1d(val).view(np.int32)
    np.bitwise_and(bits, np.int32(0x007FFFFF), out=bits)
    np.subtract(bits, np.int32(0x00400000), out=bits)
    return bits.reshape(np.shape(val))


def c_float_to_int8(v: np.ndarray) -> np.ndarray:
    """C's `(int8_t)v` for float v as x86-64 compilers emit it (cvttss2si, then the low byte).

    Truncates toward zero; NaN, inf and values beyond int32 give INT_MIN, whose low byte is 0.
    Only degenerate blocks (a scale whose reciprocal overflows) reach that case.
    """
    ok = np.isfinite(v) & (np.abs(v) < f32(2.0**31))
    i = np.where(ok, np.trunc(np.where(ok, v, f32(0))), f32(-(2.0**31))).astype(np.int64)
    return i.astype(np.uint8).view(np.int8)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's `roundf`: round half away from zero, exactly (v - trunc(v) is exact in float)."""
    t = np.trunc(v)
    frac = v - t
    return t + np.where(np.abs(frac) >= f32(0.5), np.sign(v), f32(0.0)).astype(v.dtype)


def to_f16(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16: IEEE round to nearest even (what F16C's vcvtps2ph with mode 0 does)."""
    with np.errstate(over="ignore"):  # beyond fp16 range becomes inf, as in C
        return np.asarray(v, dtype=np.float32).astype(np.float16)


def f16_roundtrip(v: np.ndarray) -> np.ndarray:
    """The float32 that a value becomes after being stored as fp16 and read back."""
    return to_f16(v).astype(np.float32)


def safe_div(num: np.ndarray, den: np.ndarray, where: np.ndarray) -> np.ndarray:
    """num / den in float32 where `where`, 0 elsewhere, without warnings on the masked part."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.divide(num, den, dtype=np.float32)
    return np.where(where, q, f32(0.0)).astype(np.float32)
