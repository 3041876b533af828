"""Byte-exact encoders and decoders for ggml's (llama.cpp's) block quantization types.

`quantize(x, "Q4_K")` gives the bytes llama.cpp's reference quantizer writes for the same
float32 input; `dequantize` reads them back as ggml does. Types are named as in GGUF.
For the legacy types, `pack_q8_0`, `pack_q4_0`, `pack_q4_1`, `pack_q5_0`, `pack_q5_1`
write already-chosen codes and fp16 scales without requantizing.
The quantized types take a fast path, ggml's own C quantizer (`fast`), when llama-cpp-python's
library is installed; the numpy encoders here are the reference it is tested against.
"""

from __future__ import annotations

import numpy as np

from . import fast
from .floats import dequantize_float, quantize_float
from .kquants import K_TYPES, dequantize_kquant, quantize_kquant
from .layout import LAYOUTS, get_layout
from .legacy import (
    LEGACY_TYPES,
    LegacyBlocks,
    dequantize_legacy,
    pack_q4_0,
    pack_q4_1,
    pack_q5_0,
    pack_q5_1,
    pack_q8_0,
    quantize_legacy,
    unpack_legacy,
)
from .weighted import WEIGHTED_LEGACY, quantize_legacy_weighted

FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED_TYPES: tuple[str, ...] = FLOAT_TYPES + LEGACY_TYPES + K_TYPES

__all__ = [
    "SUPPORTED_TYPES",
    "LegacyBlocks",
    "block_size",
    "dequantize",
    "pack_q4_0",
    "pack_q4_1",
    "pack_q5_0",
    "pack_q5_1",
    "pack_q8_0",
    "quantize",
    "type_size",
    "unpack_legacy",
]

assert set(SUPPORTED_TYPES) == set(LAYOUTS)


def block_size(qtype: str) -> int:
    """Elements per block of `qtype` (1 for the float types, 32 legacy, 256 K-quants)."""
    return get_layout(qtype).block_size


def type_size(qtype: str) -> int:
    """Bytes per block of `qtype`."""
    return get_layout(qtype).type_size


IMPLEMENTATIONS = ("auto", "fast", "reference")


def quantize(x: np.ndarray, qtype: str, importance: np.ndarray | None = None, *,
             impl: str = "auto") -> np.ndarray:
    """float array (..., n) -> uint8 (..., n // block_size * type_size) in ggml's `qtype`.

    `x` is converted to float32 first (ggml quantizes float32). n must be a multiple of
    the block size; quantized types need finite input. `importance` (n,), one weight per
    column as in llama.cpp's imatrix, selects llama.cpp's weighted quantizers (F32/F16/BF16
    and Q8_0 ignore it, as llama.cpp does). `impl`: "reference" (the numpy encoders), "fast"
    (ggml's C quantizer, see `lowbit.ggml.fast`) or "auto" (fast when available).
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"quantize: impl must be one of {', '.join(IMPLEMENTATIONS)}, "
                         f"got {impl!r}")
    layout = get_layout(qtype)
    name = layout.name
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"quantize to {name}: expected a float array, got dtype {x.dtype}")
    n = _row_length(x, f"quantize to {name}", "", "block size", layout.block_size)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if name in FLOAT_TYPES:
        return quantize_float(x, name)
    if not np.isfinite(x).all():
        raise ValueError(f"quantize to {name}: input contains NaN or infinity")
    qw = None if importance is None else _check_importance(importance, n, name)
    row_bytes = n // layout.block_size * layout.type_size
    if impl == "fast" or (impl == "auto" and fast.available(name)):
        out = fast.quantize_rows(x.reshape(-1, n), name, row_bytes, qw)
        return out.reshape(*x.shape[:-1], row_bytes)
    blocks = x.reshape(-1, layout.block_size)
    if qw is not None and name in WEIGHTED_LEGACY:
        out = quantize_legacy_weighted(x.reshape(-1, n), name, qw)
    elif name in LEGACY_TYPES:
        out = quantize_legacy(blocks, name)
    else:
        qwb = None if qw is None else np.tile(qw.reshape(-1, layout.block_size),
                                              (blocks.shape[0] * layout.block_size // n, 1))
        out = quantize_kquant(blocks, name, qwb)
    return out.reshape(*x.shape[:-1], row_bytes)


def _check_importance(importance: np.ndarray, n: int, name: str) -> np.ndarray:
    """The importance vector as float32 (n,), checked: one finite weight per column."""
    qw = np.asarray(importance)
    if qw.shape != (n,):
        raise ValueError(f"quantize to {name}: importance has shape {qw.shape}, expected ({n},) "
                         "(one weight per column of the row)")
    qw = np.ascontiguousarray(qw, dtype=np.float32)
    if not np.isfinite(qw).all():
        raise ValueError(f"quantize to {name}: importance contains NaN or infinity")
    return qw


def _row_length(a: np.ndarray, what: str, unit: str, multiple_of: str, size: int) -> int:
    """The length of ``a``'s rows, checked to be a whole number of blocks; errors say ``what``."""
    if a.ndim == 0:
        raise ValueError(f"{what}: expected an array of rows, got a scalar")
    n = a.shape[-1]
    if n % size:
        raise ValueError(f"{what}: row length {n}{unit} is not a multiple of the {multiple_of} "
                         f"{size}")
    return n


def dequantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """uint8 (..., nbytes) in ggml's `qtype` -> float32 (..., nbytes // type_size * block_size)."""
    layout = get_layout(qtype)
    name = layout.name
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise TypeError(f"dequantize {name}: expected uint8 bytes, got dtype {data.dtype}")
    nbytes = _row_length(data, f"dequantize {name}", " bytes", "type size", layout.type_size)
    data = np.ascontiguousarray(data)
    n = nbytes // layout.type_size * layout.block_size
    if name in FLOAT_TYPES:
        return dequantize_float(data, name)
    blocks = data.reshape(-1, layout.type_size)
    if name in LEGACY_TYPES:
        y = dequantize_legacy(blocks, name)
    else:
        y = dequantize_kquant(blocks, name)
    return y.reshape(*data.shape[:-1], n)
