"""A deliberately plain HQQ: one group at a time, float64, Python loop over the rounds, from the
formulas in lowbit.methods.hqq's docstring (block granularity, float zero point, no outliers).
Rounding to the stored fp16 scale/zero is written out here, not taken from lowbit."""

from __future__ import annotations

import torch


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float64)


def _lp(g: torch.Tensor, s: torch.Tensor, zero_value: torch.Tensor, qmax: int,
        p: float) -> torch.Tensor:
    """lp error of group ``g`` with the stored (fp16) scale and zero value (w = c*s + zero)."""
    s, zv = _fp16(s), _fp16(zero_value)
    c = torch.round((g - zv) / s).clamp(0, qmax) if s != 0 else torch.zeros_like(g)
    return (g - (c * s + zv)).abs().pow(p).sum()


def reference_hqq(w: torch.Tensor, bits: int, group: int, *, p: float = 0.7, iters: int = 20,
                  beta: float = 10.0, kappa: float = 1.01,
                  refine_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero value) per group, (out, in/group), as fp16-rounded float64."""
    qmax = 2 ** bits - 1
    w = w.double()
    out_f, in_f = w.shape
    scales = torch.zeros(out_f, in_f // group, dtype=torch.float64)
    zeros = torch.zeros_like(scales)
    for r in range(out_f):
        for k in range(in_f // group):
            g = w[r, k * group:(k + 1) * group]
            s0 = _fp16((g.max() - g.min()) / qmax)
            z0 = _fp16(g.min())
            best = (_lp(g, s0, z0, qmax, p), s0, z0)
            if s0 > 0:
                s, z, b = s0, -z0 / s0, beta * s0 ** (p - 2)
                for _ in range(iters):
                    c = torch.round(g / s + z).clamp(0, qmax)
                    x = g - (c - z) * s
                    e = torch.sign(x) * torch.relu(x.abs() - x.abs() ** (p - 1) / b)
                    z = (c - (g - e) / s).mean()
                    if refine_scale:
                        d = c - z
                        fit = ((g - e) * d).sum() / (d * d).sum() if (d * d).sum() > 0 else s
                        s = fit if fit > 0 else s
                    b = b * kappa
                    err = _lp(g, s, -z * _fp16(s), qmax, p)
                    if err < best[0]:
                        best = (err, _fp16(s), _fp16(-z * _fp16(s)))
            scales[r, k], zeros[r, k] = best[1], best[2]
    return scales, zeros
