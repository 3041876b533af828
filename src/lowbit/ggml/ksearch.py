"""The scale searches behind ggml's K-quants, vectorised over many sub-blocks at once.

Each function mirrors the C routine of the same name in ggml-quants.c (make_qx_quants,
make_q3_quants, make_qkx2_quants), including float32 rounding and summation order, so that
the chosen codes and scales are bit-identical. Arrays are element-major: `x` has shape
(n, m) for m sub-blocks of n elements, so that per-sub-block quantities are (m,) vectors
and sums run over axis 0 in C's order (see `numerics.seqsum`).
"""

from __future__ import annotations

import numpy as np

from .numerics import f32, nearest_int, safe_div, seqsum, seqsum_from_first

GROUP_MAX_EPS = f32(1e-15)  # ggml: a group whose max |x| is below this is all zero


def _signed_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max |x|, the signed value attaining it, first on ties) per column of (n, m)."""
    imax = np.abs(x).argmax(axis=0)
    vmax = np.take_along_axis(x, imax[None, :], axis=0)[0]
    return np.abs(vmax), vmax


def make_qx_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes in [0, 2*nmax) and scale per sub-block; rmse_type 1 (w = x^2 or given).

    Tries iscale = -(nmax + 0.1*is)/max for is in -9..9 and keeps the one maximising the
    weighted (sum w x l)^2 / (sum w l^2), i.e. the least-squares scale. Returns (scale (m,),
    L (n, m) int32) with value ~= scale * (L - nmax).
    """
    amax, vmax = _signed_max(x)
    live = amax >= GROUP_MAX_EPS
    w = x * x if weights is None else weights
    wx = w * x

    def trial(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lf = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(np.float32)
        return lf, seqsum(wx * lf), seqsum(w * lf * lf)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lf, sumlx, suml2 = trial(safe_div(f32(-nmax), vmax, live))
        scale = safe_div(sumlx, suml2, suml2 != 0)
        best = scale * sumlx
        L = lf
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = safe_div(-(f32(nmax) + f32(0.1) * f32(step)), vmax, live)
            lf, sumlx, suml2 = trial(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[None, :], lf, L)
            scale = np.where(better, safe_div(sumlx, suml2, better), scale)
            best = np.where(better, scale * sumlx, best)
    L = np.where(live[None, :], L.astype(np.int32) + nmax, 0)
    return np.where(live, scale, f32(0)).astype(np.float32), L


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants with do_rmse: start from iscale = -nmax/max, then up to 5 passes of
    coordinate descent that move one code at a time when it raises (sum w x l)^2 / sum w l^2,
    with w = x^2. Returns (scale (m,), L (n, m) int32 in [0, 2*nmax))."""
    n = x.shape[0]
    amax, vmax = _signed_max(x)
    live = amax >= GROUP_MAX_EPS
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = safe_div(f32(-nmax), vmax, live)
        L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(np.float32)
        sumlx = seqsum(wx * L)
        suml2 = seqsum(w * L * L)
        # A pass that changes nothing leaves the state as it was, so running all 5 passes
        # everywhere equals C's early `break`.
        for _ in range(5):
            for i in range(n):
                xi, wi, wxi, li = x[i], w[i], wx[i], L[i]
                slx = sumlx - wxi * li
                sl2 = suml2 - wi * li * li
                cand = slx > 0
                new_l = np.clip(nearest_int(safe_div(xi * sl2, slx, cand)), -nmax, nmax - 1)
                new_l = new_l.astype(np.float32)
                cand &= new_l != li
                slx = slx + wxi * new_l
                sl2 = sl2 + wi * new_l * new_l
                accept = cand & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                L[i] = np.where(accept, new_l, li)
                sumlx = np.where(accept, slx, sumlx)
                suml2 = np.where(accept, sl2, suml2)
        scale = safe_div(sumlx, suml2, suml2 > 0)
    L = np.where(live[None, :], L.astype(np.int32) + nmax, 0)
    return np.where(live, scale, f32(0)).astype(np.float32), L


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float,
                     rdelta: float, nstep: int, use_mad: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric codes in [0, nmax] with scale and min per sub-block (value ~= scale*L - min).

    Starts from the min/max grid, then for iscale = (rmin + rdelta*is + nmax)/(max - min),
    is = 0..nstep, refits scale and min by weighted least squares and keeps the fit with the
    smallest weighted error (|.| if use_mad else squared). Returns (scale, the_min, L), with
    the_min >= 0 the negated offset as ggml stores it.
    """
    w = weights
    # first minimum / maximum in element order, as C's scan from x[0] with strict < / >
    vmin = np.take_along_axis(x, x.argmin(axis=0)[None, :], axis=0)[0]
    vmin = np.where(vmin > 0, f32(0), vmin)  # C: if (min > 0) min = 0;
    vmax = np.take_along_axis(x, x.argmax(axis=0)[None, :], axis=0)[0]
    sum_w = seqsum_from_first(w)
    sum_x = seqsum_from_first(w * x)  # C: sum_x = w[0]*x[0], then += w[i]*x[i]
    live = vmax != vmin

    def err(scale: np.ndarray, mn: np.ndarray, lf: np.ndarray) -> np.ndarray:
        diff = scale * lf + mn - x
        return seqsum(w * (np.abs(diff) if use_mad else diff * diff))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mn = vmin
        iscale = safe_div(f32(nmax), vmax - mn, live)
        scale = safe_div(f32(1), iscale, live)
        L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax).astype(np.float32)
        best = err(scale, mn, L)
        for step in range(nstep + 1):
            num = f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)
            iscale = safe_div(num, vmax - mn, live)
            lf = np.clip(nearest_int(iscale * (x - mn)), 0, nmax).astype(np.float32)
            wl = w * lf
            sum_l = seqsum(wl)
            sum_l2 = seqsum(wl * lf)
            sum_xl = seqsum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            ok = D > 0
            this_scale = safe_div(sum_w * sum_xl - sum_x * sum_l, D, ok)
            this_min = safe_div(sum_l2 * sum_x - sum_l * sum_xl, D, ok)
            pos = this_min > 0
            this_min = np.where(pos, f32(0), this_min)
            this_scale = np.where(pos, safe_div(sum_xl, sum_l2, pos), this_scale)
            cur = err(this_scale, this_min, lf)
            better = ok & live & (cur < best)
            L = np.where(better[None, :], lf, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L = np.where(live[None, :], L.astype(np.int32), 0)
    scale = np.where(live, scale, f32(0)).astype(np.float32)
    return scale, (-mn).astype(np.float32), L


def make_qp_quants(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants: codes L in [0, nmax] for non-negative x (n, m) (the sub-block scales of
    a super-block) with weights w: best of 9 scales by weighted error, then up to 5 passes of
    coordinate descent. Codes are stored as uint8 in C, so negative ones wrap; L is that byte."""
    n = x.shape[0]
    vmax = np.maximum(np.fmax.reduce(x, axis=0), f32(0))
    live = vmax >= GROUP_MAX_EPS
    wx = w * x

    def mse(iscale: np.ndarray, clamp: bool) -> tuple[np.ndarray, np.ndarray]:
        li = nearest_int(iscale * x)
        li = np.minimum(nmax, li) if clamp else li & 0xFF
        scale = safe_div(f32(1), iscale, live)
        diff = x - scale * li.astype(np.float32)
        return seqsum(w * diff * diff), li

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = safe_div(f32(nmax), vmax, live)
        best, _ = mse(iscale, clamp=False)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_is = safe_div(f32(0.1) * f32(step) + f32(nmax), vmax, live)
            cur, _ = mse(iscale_is, clamp=True)
            better = cur < best
            best = np.where(better, cur, best)
            iscale = np.where(better, iscale_is, iscale)
        li = np.minimum(nmax, nearest_int(iscale * x)).astype(np.float32)
        sumlx = seqsum(wx * li)
        suml2 = seqsum(w * li * li)
        L8 = (li.astype(np.int32) & 0xFF).astype(np.float32)  # C's uint8_t L[i]
        for _ in range(5):  # a pass that changes nothing is C's early break
            for i in range(n):
                slx = sumlx - wx[i] * L8[i]
                sl2 = suml2 - w[i] * L8[i] * L8[i]
                cand = (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nmax, nearest_int(safe_div(x[i] * sl2, slx, cand)))
                new_f = new_l.astype(np.float32)
                cand &= new_f != L8[i]
                slx = slx + wx[i] * new_f
                sl2 = sl2 + w[i] * new_f * new_f
                accept = cand & (slx * slx * suml2 > sumlx * sumlx * sl2)
                L8[i] = np.where(accept, (new_l & 0xFF).astype(np.float32), L8[i])
                sumlx = np.where(accept, slx, sumlx)
                suml2 = np.where(accept, sl2, suml2)
        scale = np.divide(sumlx, suml2, dtype=np.float32)
    L = np.where(live[None, :], L8.astype(np.int32), 0)
    return np.where(live, scale, f32(0)).astype(np.float32), L
