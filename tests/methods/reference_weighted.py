"""A deliberately plain importance-weighted scale search: one group at a time, float64, written
from lowbit.methods.weighted's docstring and the scale rules in lowbit.core.qparams's. Block
granularity, no outliers, no dq. Scale rounding (fp16, E8M0, E4M3 with NVFP4's tensor scale)
and element rounding (the nearest of the format's values) are written out here; only the list
of the element format's finite values is taken from lowbit."""

from __future__ import annotations

import math

import numpy as np
import torch

from lowbit.core.scheme import Scheme


def _round_scale(raw: float, scheme: Scheme) -> float:
    """``raw`` as the scheme's scale format stores it."""
    if scheme.scale_format == "fp32":
        return float(np.float32(raw))
    if scheme.scale_format == "fp16":
        return float(np.float16(raw))
    if scheme.scale_format == "bf16":
        return float(torch.tensor(raw, dtype=torch.float64).to(torch.bfloat16).double())
    if scheme.scale_format == "e4m3":
        return float(torch.tensor(min(raw, 448.0), dtype=torch.float64)
                     .to(torch.float8_e4m3fn).double())
    raise AssertionError(scheme.scale_format)


def _nearest(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[np.abs(x[:, None] - table[None, :]).argmin(axis=1)]


def _deq_sym(g: np.ndarray, scheme: Scheme, ts: float | None) -> tuple[float, np.ndarray]:
    """The effective scale a symmetric scheme chooses for ``g``, and the element values."""
    fmt = scheme.element_format
    table = fmt.finite_values.double().numpy()
    if scheme.scale_format == "e8m0":
        amax = np.abs(g).max()
        e = math.floor(math.log2(amax)) if amax > 0 else 0
        s = 2.0 ** (e - math.floor(math.log2(fmt.max)))
    else:
        if scheme.is_int:
            hi, lo = g.max(), g.min()
            m = hi if hi >= -lo else lo
            raw = m / -(fmt.qmax + 1)
        else:
            raw = np.abs(g).max() / fmt.max
        s = _round_scale(raw / ts, scheme) * ts if ts is not None else _round_scale(raw, scheme)
    return s, table


def _deq(x: np.ndarray, g: np.ndarray, scheme: Scheme, ts: float | None
         ) -> tuple[np.ndarray, float, float]:
    """(dequantized x, scale, zero value) with the scale chosen on ``g``, the transformed x."""
    fmt = scheme.element_format
    if scheme.symmetric:
        s, table = _deq_sym(g, scheme, ts)
        return (np.zeros_like(x) if s == 0 else _nearest(x / s, table) * s), s, 0.0
    lo, hi, q = g.min(), g.max(), fmt.qmax
    if scheme.zero_point == "int":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        s = _round_scale((hi - lo) / q, scheme)
        if s == 0:
            return np.zeros_like(x), s, 0.0
        zp = min(max(np.round(-lo / s), 0), q)
        c = np.clip(np.round(x / s) + zp, 0, q)
        return (c - zp) * s, s, -zp * s
    s, z = _round_scale((hi - lo) / q, scheme), _round_scale(lo, scheme)
    c = np.zeros_like(x) if s == 0 else np.clip(np.round((x - z) / s), 0, q)
    return c * s + z, s, z


def _transforms(scheme: Scheme, grid: int, max_shrink: float) -> list:
    if scheme.scale_format == "e8m0":
        fs = [2.0] + [2.0 ** -k for k in range(1, 60) if 2.0 ** -k >= 1 - max_shrink - 1e-12]
    else:
        fs = [1 - max_shrink * i / grid for i in range(1, grid + 1)]
    out = []
    for f in fs:
        if scheme.symmetric:
            out.append(lambda g, f=f: g * f)
        else:
            for a in ("min", "max", "mid"):
                out.append(lambda g, f=f, a=a: (anchor := {"min": g.min(), "max": g.max(),
                                                           "mid": (g.min() + g.max()) / 2}[a])
                           + f * (g - anchor))
    return out


def reference_weighted(w: torch.Tensor, importance: torch.Tensor, scheme: str, *,
                       grid: int = 20, max_shrink: float = 0.5
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(effective scale, zero value, weighted error) of every group, (out, in/group) each."""
    scheme = Scheme.parse(scheme)
    n = scheme.block_size
    w64, imp = w.double().numpy(), importance.double().numpy()
    rows, groups = w64.shape[0], w64.shape[1] // n
    ts = None
    if scheme.tensor_scale:  # NVFP4: from the whole weight's largest block, as RTN has it
        fmt = scheme.element_format
        ts = float(np.float32(np.abs(w64).max() / (fmt.max * 448.0)))
    scale, zero, error = (np.zeros((rows, groups)) for _ in range(3))
    tries = _transforms(scheme, grid, max_shrink)
    for r in range(rows):
        for k in range(groups):
            x, q = w64[r, k * n:(k + 1) * n], imp[k * n:(k + 1) * n]
            deq, s, z = _deq(x, x, scheme, ts)
            best = ((x - deq) ** 2 * q).sum(), s, z
            for t in tries:
                deq, s, z = _deq(x, t(x), scheme, ts)
                e = ((x - deq) ** 2 * q).sum()
                if e < best[0]:
                    best = e, s, z
            error[r, k], scale[r, k], zero[r, k] = best
    return scale, zero, error
