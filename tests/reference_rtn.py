"""A deliberately plain round-to-nearest: one group at a time, in Python loops, from the rules in
lowbit.methods.rtn's docstring. The fast implementation must give the same codes and scales."""

from __future__ import annotations

import math

import torch

from lowbit.core.scheme import Scheme
from lowbit.formats import IntFormat


def groups_of(w: torch.Tensor, scheme: Scheme) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """[((scale_row, scale_col), weights of the group)] in scale order."""
    out_f, in_f = w.shape
    if scheme.granularity == "tensor":
        return [((0, 0), w.reshape(-1))]
    if scheme.granularity == "channel":
        return [((r, 0), w[r]) for r in range(out_f)]
    n = scheme.block_size
    return [((r, c // n), w[r, c:c + n]) for r in range(out_f) for c in range(0, in_f, n)]


def reference_dequantize(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Quantize and dequantize ``w`` group by group (no outliers, no double quantization)."""
    assert scheme.outliers is None and not scheme.double_quant
    fmt, sfmt = scheme.element_format, scheme.scale_fmt
    w = w.float()
    out = torch.empty_like(w).reshape(-1) if scheme.granularity == "tensor" else None
    result = torch.empty_like(w)
    ts = 1.0
    if scheme.tensor_scale:
        amax_t = float(w.abs().max())
        ts = amax_t / (fmt.max * sfmt.max) if amax_t > 0 else 1.0
        ts = float(torch.tensor(ts, dtype=torch.float32))
    for (r, c), g in groups_of(w, scheme):
        if not scheme.symmetric:
            lo, hi = float(g.min()), float(g.max())
            s = _round(sfmt, torch.tensor((hi - lo), dtype=torch.float32) / fmt.qmax)
            z = _round(sfmt, torch.tensor(lo, dtype=torch.float32))
            x = (g - z) / s if s != 0 else torch.zeros_like(g)
            q = torch.clamp(torch.round(x), fmt.qmin, fmt.qmax)
            deq = q * s + z
        else:
            amax = float(g.abs().max())
            if scheme.scale_format == "e8m0":
                e = math.floor(math.log2(amax)) - math.floor(math.log2(fmt.max)) if amax else 0
                s = 2.0 ** max(-127, min(127, e))
            elif isinstance(fmt, IntFormat):
                m = float(g.max()) if float(g.max()) >= -float(g.min()) else float(g.min())
                s = _round(sfmt, torch.tensor(m, dtype=torch.float32) / -(fmt.qmax + 1) / ts)
            else:
                s = _round(sfmt, torch.tensor(amax, dtype=torch.float32) / fmt.max / ts)
            s = float(torch.tensor(s, dtype=torch.float32) * ts) if scheme.tensor_scale else s
            if s == 0:
                deq = torch.zeros_like(g)
            else:
                x = g / s
                if isinstance(fmt, IntFormat):
                    codes = torch.clamp(torch.round(x), fmt.qmin, fmt.qmax)
                    deq = codes * s
                else:
                    deq = fmt.decode(fmt.encode_reference(x)) * s
        if out is not None:
            out[:] = deq
        elif scheme.granularity == "channel":
            result[r] = deq
        else:
            result[r, c * scheme.block_size: c * scheme.block_size + g.numel()] = deq
    return out.reshape(w.shape) if out is not None else result


def _round(fmt, x: torch.Tensor) -> float:
    return float(fmt.decode(fmt.encode(x.reshape(1))))
