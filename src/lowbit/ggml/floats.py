"""F32, F16 and BF16 as ggml stores them (one element per "block")."""

from __future__ import annotations

import numpy as np

from .numerics import to_f16


def quantize_float(x: np.ndarray, qtype: str) -> np.ndarray:
    """float32 array -> uint8 bytes (..., n * itemsize) of `qtype` in {F32, F16, BF16}."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == "F32":
        out = x
    elif qtype == "F16":
        out = to_f16(x)  # round to nearest even, as GGML_FP32_TO_FP16
    elif qtype == "BF16":
        out = _fp32_to_bf16_bits(x)
    else:
        raise AssertionError(qtype)
    return out.view(np.uint8).reshape(*x.shape[:-1], -1)


def dequantize_float(data: np.ndarray, qtype: str) -> np.ndarray:
    """uint8 bytes of F32/F16/BF16 -> float32 (..., n)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if qtype == "F32":
        return data.view("<f4").astype(np.float32)
    if qtype == "F16":
        return data.view("<f2").astype(np.float32)
    if qtype == "BF16":
        return (data.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
    raise AssertionError(qtype)


def _fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: NaN made quiet, otherwise round to nearest even."""
    u = x.view(np.uint32)
    rounded = (u.astype(np.uint64) + (0x7FFF + ((u >> np.uint32(16)) & np.uint32(1)))) >> 16
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (u >> np.uint32(16)) | np.uint32(64)
    return np.where(nan, quiet, rounded).astype("<u2")
