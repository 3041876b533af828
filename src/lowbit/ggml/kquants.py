"""ggml's K-quants Q2_K..Q6_K: quantize (byte-exact ports of `quantize_row_qN_K_ref`) and
dequantize (float32 operation order of ggml's `dequantize_row_qN_K`).

Value formulas per super-block of 256 (d, dmin fp16; sc, m the sub-block's integer scale
and min; q the element's code):
    Q2_K: 16 x 16,  value = (d*sc)*q - (dmin*m),  q in [0, 3],  sc, m in [0, 15]
    Q3_K: 16 x 16,  value = (d*sc)*q,  q in [-4, 3],  sc in [-32, 31]
    Q4_K:  8 x 32,  value = (d*sc)*q - (dmin*m),  q in [0, 15], sc, m in [0, 63]
    Q5_K:  8 x 32,  value = (d*sc)*q - (dmin*m),  q in [0, 31], sc, m in [0, 63]
    Q6_K: 16 x 16,  value = (d*sc)*q,  q in [-32, 31], sc in [-128, 127]
"""

from __future__ import annotations

import numpy as np

from . import kpack
from .ksearch import (
    GROUP_MAX_EPS,
    make_q3_quants,
    make_qkx2_quants,
    make_qp_quants,
    make_qx_quants,
)
from .layout import QK_K, get_layout, join_blocks, split_blocks
from .numerics import f16_roundtrip, f32, nearest_int, safe_div, seqsum, to_f16
from .weighted import superblock_weights

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# Super-blocks handled per vectorised pass: big enough to amortise numpy's per-call cost,
# small enough that the (elements x sub-blocks) temporaries stay in cache.
CHUNK_SUPERBLOCKS = 512


def _subblocks(x: np.ndarray, n: int) -> np.ndarray:
    """(nb, 256) -> element-major (n, nb * 256 // n) view-copy of the sub-blocks of n."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _from_subblocks(L: np.ndarray, nb: int) -> np.ndarray:
    return L.T.reshape(nb, QK_K)


def _requantize(x: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None,
                lo: int, hi: int, offset: int) -> np.ndarray:
    """Final codes from the stored (fp16-rounded) scales, as every *_ref does: per sub-block
    with d != 0, q = clamp(nearest_int((x + dm) / d), lo, hi) + offset; sub-blocks with
    d == 0 keep the codes of the search. x, L: (nb, S, n); d, dm: (nb, S)."""
    num = x if dm is None else x + dm[..., None]
    live = (d != 0)[..., None]
    q = np.clip(nearest_int(safe_div(num, d[..., None], live)), lo, hi) + offset
    return np.where(live, q, L)


def _positive_max(s: np.ndarray) -> np.ndarray:
    """C's `float m = 0; for (...) if (s[j] > m) m = s[j];`: the largest positive entry per
    row, else +0.0. NaN (from float32 overflow on huge inputs) never wins a comparison."""
    m = np.fmax.reduce(s, axis=1)
    return np.where(m > 0, m, f32(0.0))


def _first_absmax(s: np.ndarray) -> np.ndarray:
    """C's `if (fabsf(s[j]) > amax) { amax = fabsf(s[j]); max = s[j]; }` from amax = max = 0:
    the signed entry of largest |.| per row, first on ties, NaN skipped, +0.0 if none > 0."""
    a = np.abs(s)
    a = np.where(np.isnan(a), f32(-1), a)
    i = a.argmax(axis=1)[:, None]
    best = np.take_along_axis(s, i, axis=1)[:, 0]
    return np.where(np.take_along_axis(a, i, axis=1)[:, 0] > 0, best, f32(0.0))


# ---------------------------------------------------------------- quantizers


def _quantize_q6_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    # with an imatrix, llama.cpp's quantize_row_q6_K_impl weights by the importance itself
    scales, L = make_qx_quants(_subblocks(x, 16), 32, None if qw is None else _subblocks(qw, 16))
    scales = scales.reshape(nb, 16)
    L = _from_subblocks(L, nb).reshape(nb, 16, 16)
    max_scale = _first_absmax(scales)
    live = np.abs(max_scale) >= GROUP_MAX_EPS
    iscale = safe_div(f32(-128), max_scale, live)
    d16 = np.where(live, to_f16(safe_div(f32(1), iscale, live)), np.float16(0))
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
    sc = np.where(live[:, None], sc, 0).astype(np.int8)
    d = d16.astype(np.float32)[:, None] * sc.astype(np.float32)
    L = _requantize(x.reshape(nb, 16, 16), L, d, None, -32, 31, 32).reshape(nb, QK_K)
    L = np.where(live[:, None], L, 0)  # C zeroes a whole block whose scales are all ~0
    ql, qh = kpack.pack_q6(L)
    return join_blocks(get_layout("Q6_K"), ql=ql, qh=qh, scales=sc, d=d16)


def _quantize_q3_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    scales, L = make_q3_quants(_subblocks(x, 16), 4)
    scales = scales.reshape(nb, 16)
    L = _from_subblocks(L, nb).reshape(nb, 16, 16)
    max_scale = _first_absmax(scales)
    live = max_scale != 0
    iscale = safe_div(f32(-32), max_scale, live)
    l6 = np.clip(nearest_int(iscale[:, None] * scales), -32, 31) + 32
    l6 = np.where(live[:, None], l6, 0)
    d16 = np.where(live, to_f16(safe_div(f32(1), iscale, live)), np.float16(0))
    d = d16.astype(np.float32)[:, None] * (l6 - 32).astype(np.float32)
    L = _requantize(x.reshape(nb, 16, 16), L, d, None, -4, 3, 4).reshape(nb, QK_K)
    return join_blocks(
        get_layout("Q3_K"),
        hmask=kpack.pack_highbit(L > 3), qs=kpack.pack_2bit(L & 3),
        scales=kpack.pack_q3_scales(l6), d=d16,
    )


def _quantize_q3_k_weighted(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """quantize_row_q3_K_impl with quant_weights: weighted make_qx_quants per sub-block, then
    for the 6-bit scales, weighted by each sub-block's summed weights."""
    nb = x.shape[0]
    w = _subblocks(superblock_weights(x, qw, 2), 16)
    scales, L = make_qx_quants(_subblocks(x, 16), 4, w)
    sw = np.ascontiguousarray(seqsum(w).reshape(nb, 16).T)
    d_block, l6 = make_qx_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 32, sw)
    l6 = l6.T
    d16 = to_f16(d_block)
    d = d16.astype(np.float32)[:, None] * (l6 - 32).astype(np.float32)
    L = _from_subblocks(L, nb).reshape(nb, 16, 16)
    L = _requantize(x.reshape(nb, 16, 16), L, d, None, -4, 3, 4).reshape(nb, QK_K)
    return join_blocks(
        get_layout("Q3_K"),
        hmask=kpack.pack_highbit(L > 3), qs=kpack.pack_2bit(L & 3),
        scales=kpack.pack_q3_scales(l6), d=d16,
    )


def _quantize_q2_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = _subblocks(x, 16)
    scales, mins, L = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    L = _from_subblocks(L, nb).reshape(nb, 16, 16)
    q4scale = f32(15)
    max_scale = _positive_max(scales)
    max_min = _positive_max(mins)
    has_s, has_m = max_scale > 0, max_min > 0
    ls = nearest_int(safe_div(q4scale, max_scale, has_s)[:, None] * scales)
    lm = nearest_int(safe_div(q4scale, max_min, has_m)[:, None] * mins)
    byte = np.where(has_s[:, None], ls & 0xFF, 0)
    byte = np.where(has_m[:, None], (byte | (lm << 4)) & 0xFF, byte).astype(np.uint8)
    d16 = np.where(has_s, to_f16(max_scale / q4scale), np.float16(0))
    dmin16 = np.where(has_m, to_f16(max_min / q4scale), np.float16(0))
    d = d16.astype(np.float32)[:, None] * (byte & 0x0F).astype(np.float32)
    dm = dmin16.astype(np.float32)[:, None] * (byte >> 4).astype(np.float32)
    L = _requantize(x.reshape(nb, 16, 16), L, d, dm, 0, 3, 0).reshape(nb, QK_K)
    return join_blocks(get_layout("Q2_K"), scales=byte, qs=kpack.pack_2bit(L),
                       d=d16, dmin=dmin16)


def _quantize_q2_k_weighted(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """quantize_row_q2_K_impl: weighted make_qkx3_quants per sub-block of 16, then
    make_qp_quants for the 4-bit scales and mins, weighted by each sub-block's summed weights."""
    nb = x.shape[0]
    w = _subblocks(superblock_weights(x, qw, 1), 16)
    scales, mins, L = make_qkx2_quants(_subblocks(x, 16), w, 3, -0.9, 0.05, 36, use_mad=False)
    sw = np.ascontiguousarray(seqsum(w).reshape(nb, 16).T)
    dm, ls = make_qp_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 15, sw)
    mm, lm = make_qp_quants(np.ascontiguousarray(mins.reshape(nb, 16).T), 15, sw)
    byte = ((ls.T | (lm.T << 4)) & 0xFF).astype(np.uint8)
    d16, dmin16 = to_f16(dm), to_f16(mm)
    d = d16.astype(np.float32)[:, None] * (byte & 0x0F).astype(np.float32)
    dmn = dmin16.astype(np.float32)[:, None] * (byte >> 4).astype(np.float32)
    L = _from_subblocks(L, nb).reshape(nb, 16, 16)
    L = _requantize(x.reshape(nb, 16, 16), L, d, dmn, 0, 3, 0).reshape(nb, QK_K)
    return join_blocks(get_layout("Q2_K"), scales=byte, qs=kpack.pack_2bit(L),
                       d=d16, dmin=dmin16)


def _quantize_q45_k(x: np.ndarray, qtype: str) -> np.ndarray:
    nb = x.shape[0]
    nmax, rmin, nstep = (15, -1.0, 20) if qtype == "Q4_K" else (31, -0.5, 15)
    xs = _subblocks(x, 32)
    av_x = np.sqrt(seqsum(xs * xs) / f32(32))
    weights = av_x[None, :] + np.abs(xs)
    scales, mins, L = make_qkx2_quants(xs, weights, nmax, rmin, 0.1, nstep, use_mad=False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    L = _from_subblocks(L, nb).reshape(nb, 8, 32)
    max_scale = _positive_max(scales)
    max_min = _positive_max(mins)
    inv_scale = safe_div(f32(63), max_scale, max_scale > 0)
    inv_min = safe_div(f32(63), max_min, max_min > 0)
    # C: uint8_t ls = nearest_int(...); ls = MIN(63, ls);
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
    d16 = to_f16(max_scale / f32(63))
    dmin16 = to_f16(max_min / f32(63))
    return _finish_q45_k(x, L, ls, lm, d16, dmin16, qtype)


def _quantize_q45_k_weighted(x: np.ndarray, qw: np.ndarray, qtype: str) -> np.ndarray:
    """quantize_row_q4_K_impl / q5_K_impl with quant_weights: weighted make_qkx3_quants per
    sub-block, then make_qp_quants for the 6-bit scales and mins, weighted by each sub-block's
    summed weights."""
    nb = x.shape[0]
    nmax = 15 if qtype == "Q4_K" else 31
    w = _subblocks(superblock_weights(x, qw, 2), 32)
    scales, mins, L = make_qkx2_quants(_subblocks(x, 32), w, nmax, -0.9, 0.05, 36,
                                       use_mad=False)
    sw = seqsum(w).reshape(nb, 8).T
    d_block, ls = make_qp_quants(np.ascontiguousarray(scales.reshape(nb, 8).T), 63, sw)
    m_block, lm = make_qp_quants(np.ascontiguousarray(mins.reshape(nb, 8).T), 63, sw)
    L = _from_subblocks(L, nb).reshape(nb, 8, 32)
    return _finish_q45_k(x, L, ls.T, lm.T, to_f16(d_block), to_f16(m_block), qtype)


def _finish_q45_k(x: np.ndarray, L: np.ndarray, ls: np.ndarray, lm: np.ndarray,
                  d16: np.ndarray, dmin16: np.ndarray, qtype: str) -> np.ndarray:
    """Requantize with the stored scales (nb, 8) and mins and write Q4_K / Q5_K blocks."""
    nb = x.shape[0]
    nmax = 15 if qtype == "Q4_K" else 31
    d = d16.astype(np.float32)[:, None] * ls.astype(np.float32)
    dm = dmin16.astype(np.float32)[:, None] * lm.astype(np.float32)
    L = _requantize(x.reshape(nb, 8, 32), L, d, dm, 0, nmax, 0).reshape(nb, QK_K)
    fields = {"d": d16, "dmin": dmin16, "scales": kpack.pack_scale_min_k4(ls, lm)}
    if qtype == "Q4_K":
        fields["qs"] = kpack.pack_nibbles(L)
    else:
        fields["qs"] = kpack.pack_nibbles(L & 15)
        fields["qh"] = kpack.pack_highbit(L >> 4)
    return join_blocks(get_layout(qtype), **fields)


_QUANTIZERS = {
    "Q2_K": _quantize_q2_k,
    "Q3_K": _quantize_q3_k,
    "Q4_K": lambda x: _quantize_q45_k(x, "Q4_K"),
    "Q5_K": lambda x: _quantize_q45_k(x, "Q5_K"),
    "Q6_K": _quantize_q6_k,
}

WEIGHTED_QUANTIZERS = {
    "Q2_K": _quantize_q2_k_weighted,
    "Q3_K": _quantize_q3_k_weighted,
    "Q4_K": lambda x, qw: _quantize_q45_k_weighted(x, qw, "Q4_K"),
    "Q5_K": lambda x, qw: _quantize_q45_k_weighted(x, qw, "Q5_K"),
    "Q6_K": _quantize_q6_k,
}


def quantize_kquant(blocks: np.ndarray, qtype: str, qw: np.ndarray | None = None
                    ) -> np.ndarray:
    """float32 (nb, 256) -> uint8 (nb, type_size), as ggml's `quantize_row_<qtype>_ref`, or
    with importance `qw` (nb, 256) as llama.cpp's `quantize_row_<qtype>_impl`."""
    if qw is not None and qtype not in WEIGHTED_QUANTIZERS:
        raise NotImplementedError(f"quantize to {qtype} with an importance vector is not "
                                  f"supported yet (supported: {', '.join(WEIGHTED_QUANTIZERS)})")
    x = blocks.astype(np.float32, copy=False)
    out = np.empty((x.shape[0], get_layout(qtype).type_size), dtype=np.uint8)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(0, x.shape[0], CHUNK_SUPERBLOCKS):
            part = slice(s, s + CHUNK_SUPERBLOCKS)
            if qw is None:
                out[part] = _QUANTIZERS[qtype](x[part])
            else:
                out[part] = WEIGHTED_QUANTIZERS[qtype](x[part], qw[part])
    return out


# ---------------------------------------------------------------- dequantizers


def dequantize_kquant(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """uint8 (nb, type_size) -> float32 (nb, 256) by the formulas in the module docstring."""
    f = split_blocks(blocks, get_layout(qtype))
    nb = blocks.shape[0]
    d = f16_roundtrip(f["d"])  # (nb, 1)
    if qtype == "Q6_K":
        q = kpack.unpack_q6(f["ql"], f["qh"]).astype(np.float32) - f32(32)
        dl = d * f["scales"].astype(np.float32)
        return (dl.reshape(nb, 16, 1) * q.reshape(nb, 16, 16)).reshape(nb, QK_K)
    if qtype == "Q3_K":
        low = kpack.unpack_2bit(f["qs"]).astype(np.int16)
        high = kpack.unpack_highbit(f["hmask"]).astype(np.int16)
        q = (low - 4 * (1 - high)).astype(np.float32)
        dl = d * (kpack.unpack_q3_scales(f["scales"]).astype(np.float32) - f32(32))
        return (dl.reshape(nb, 16, 1) * q.reshape(nb, 16, 16)).reshape(nb, QK_K)
    dmin = f16_roundtrip(f["dmin"])
    if qtype == "Q2_K":
        sc, m, q, groups = f["scales"] & 0x0F, f["scales"] >> 4, kpack.unpack_2bit(f["qs"]), 16
    else:
        sc, m = kpack.unpack_scale_min_k4(f["scales"])
        q = kpack.unpack_nibbles(f["qs"])
        if qtype == "Q5_K":
            q = q | (kpack.unpack_highbit(f["qh"]) << np.uint8(4))
        groups = 8
    dl = (d * sc.astype(np.float32)).reshape(nb, groups, 1)
    ml = (dmin * m.astype(np.float32)).reshape(nb, groups, 1)
    y = dl * q.astype(np.float32).reshape(nb, groups, -1) - ml
    return y.reshape(nb, QK_K)
