"""Importance-weighted ggml quantizers: llama.cpp's `quantize_<type>` with an imatrix.

With `quant_weights` (one importance value per column of the row), llama.cpp replaces the
reference quantizers by `quantize_row_<type>_impl`: a weighted least-squares scale search
per block, with per-element weights built from the importance and the row's (or super-block's)
mean square. Q8_0 ignores the importance. The searches are `ksearch`'s, vectorised.
Known limit: a sub-block with a single nonzero weight makes the asymmetric fit's
denominator pure rounding noise, so its bytes depend on how the C build fused multiply-adds.
"""

from __future__ import annotations

import numpy as np

from .ksearch import make_qkx2_quants, make_qx_quants
from .layout import QK_K, QK_LEGACY
from .legacy import _blocks_from_parts
from .numerics import f32, seqsum, to_f16

WEIGHTED_LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")


def row_sigma2(x: np.ndarray) -> np.ndarray:
    """C's `float s = 0; for (j < n) s += x[j]*x[j]; sigma2 = s/n` per row of (rows, n)."""
    return seqsum(np.ascontiguousarray((x * x).T)) / f32(x.shape[1])


def element_weights(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """llama.cpp's `qw[j] * sqrtf(sigma2 + x[j]*x[j])`; sigma2 broadcasts against x."""
    return (qw * np.sqrt(sigma2 + x * x)).astype(np.float32)


def quantize_legacy_weighted(x: np.ndarray, qtype: str, qw: np.ndarray) -> np.ndarray:
    """float32 rows (rows, n) and importance (n,) -> uint8 blocks (rows * n // 32, type_size),
    as `quantize_row_<qtype>_impl` with quant_weights."""
    rows, n = x.shape
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sigma2 = row_sigma2(x)[:, None]
        w = element_weights(x, qw[None, :], sigma2)
    xs = np.ascontiguousarray(x.reshape(-1, QK_LEGACY).T)  # element-major (32, blocks)
    ws = np.ascontiguousarray(w.reshape(-1, QK_LEGACY).T)
    m16 = None
    if qtype in ("Q4_0", "Q5_0"):
        scale, L = make_qx_quants(xs, 8 if qtype == "Q4_0" else 16, ws)
    else:
        nmax = 15 if qtype == "Q4_1" else 31
        scale, the_min, L = make_qkx2_quants(xs, ws, nmax, -0.9, 0.05, 36, use_mad=False)
        m16 = to_f16(-the_min)
    return _blocks_from_parts(qtype, to_f16(scale), m16, L.T.astype(np.int16))


def superblock_weights(x: np.ndarray, qw: np.ndarray, factor: int) -> np.ndarray:
    """Weights per element of super-blocks (nb, 256): qw * sqrt(sigma2 + x^2) with
    sigma2 = factor * sum(x^2) / 256 over the super-block (factor 2 for Q3_K..Q5_K)."""
    s = seqsum(np.ascontiguousarray((x * x).T))
    sigma2 = f32(factor) * s / f32(QK_K) if factor != 1 else s / f32(QK_K)
    return element_weights(x, qw, sigma2[:, None])
