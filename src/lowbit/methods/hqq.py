"""HQQ, half-quadratic quantization (Badri & Shaji, 2023): data-free refinement of each group's
zero point (and optionally its scale) for asymmetric integer schemes.

With a group's codes ``c = clamp(round(w/s + z), 0, qmax)`` and ``w ≈ (c - z) s``, HQQ minimises
the lp norm (p < 1) of the error, which lets a few large errors stand instead of spreading
them. It splits the error off as a variable ``e`` and alternates, for ``iters`` rounds:

    e = shrink_p(w - (c - z) s, beta)      # sign(x) relu(|x| - |x|^(p-1) / beta)
    z = mean(c - (w - e) / s)              # the closed-form zero for that e
    s = sum((w - e)(c - z)) / sum((c - z)^2)   # only with refine_scale: least squares for s
    beta *= kappa

Defaults are the paper's: p = 0.7, beta = 10, kappa = 1.01, 20 rounds. One change: the paper
applies beta to the weight's own units, where the shrinkage threshold ``beta^(-1/(2-p))`` is
0.17 whatever the weights' size; here the error is measured in steps of its group's scale
(``beta`` becomes ``beta * s^(p-2)``), so the solver does the same thing to a layer whatever its
magnitude. After every round each group's lp error is measured with the scale and zero as they
will be stored (rounded to the scale format; ``zpint`` zero rounded to an integer code) and the
best so far is kept, starting from round-to-nearest's: HQQ never raises a group's lp error.

Any group size, float zero point or ``zpint``; outliers (``outK``) are split first as RTN does
and take no part. Symmetric and non-integer schemes have no zero to refine: a ValueError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lowbit.core.grouping import check_weight, to_groups
from lowbit.core.qparams import QParams, choose_qparams, dequantize_codes, quantize_with_qparams
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.methods.registry import register_method
from lowbit.methods.rtn import split_outliers

if TYPE_CHECKING:
    from lowbit.calibration.stats import LayerStats

P, BETA, KAPPA, ITERS = 0.7, 10.0, 1.01, 20  # the HQQ paper's defaults


def quantize_hqq(w: torch.Tensor, scheme: Scheme | str, *, p: float = P, iters: int = ITERS,
                 beta: float = BETA, kappa: float = KAPPA, refine_scale: bool = False,
                 name: str = "weight") -> QTensor:
    """HQQ on a 2-D weight (out, in) under an asymmetric integer ``scheme``."""
    scheme = Scheme.parse(scheme)
    if not (scheme.is_int and not scheme.symmetric):
        raise ValueError(f"{name}: HQQ refines the zero point of asymmetric integer schemes "
                         f"(intN-asym-...), and {scheme} has none; use rtn or gptq for it")
    if not 0 < p < 1 or iters < 0 or beta <= 0 or kappa < 1:
        raise ValueError(f"{name}: HQQ options need 0 < p < 1, iters >= 0, beta > 0 and "
                         f"kappa >= 1; got p={p}, iters={iters}, beta={beta}, kappa={kappa}")
    w = check_weight(w, name)
    outliers = None
    if scheme.outliers is not None:
        w, *outliers = split_outliers(w, scheme)
    keep = torch.ones_like(w)
    if outliers is not None:
        keep.view(-1)[outliers[0].long()] = 0.0
    qp = _solve(w, keep, choose_qparams(w, scheme, name=name), p=p, iters=iters, beta=beta,
                kappa=kappa, refine_scale=refine_scale)
    return QTensor.from_codes(quantize_with_qparams(w, qp), qp,
                              outliers=None if outliers is None else tuple(outliers))


def make_qparams(scheme: Scheme, shape: tuple[int, int], scale: torch.Tensor,
                 zero: torch.Tensor) -> QParams:
    """QParams of an asymmetric integer scheme from a working scale and a zero in code units
    (``w = (c - zero) * scale``; for a scale of 0, the zero's negated value), rounded as they
    are stored."""
    sfmt = scheme.scale_fmt
    stored_scale = sfmt.encode(scale)
    s = sfmt.decode(stored_scale)
    if scheme.zero_point == "int":
        qmax = scheme.element_format.qmax
        stored_zero = torch.where(s == 0, 0.0, zero.round().clamp(0, qmax)).to(torch.uint8)
        return QParams(scheme, shape, s, stored_zero.float(), stored_scale, stored_zero)
    stored_zero = sfmt.encode(-zero * torch.where(s == 0, 1.0, s))  # s = 0: zero is the value
    return QParams(scheme, shape, s, sfmt.decode(stored_zero), stored_scale, stored_zero)


def lp_error(w: torch.Tensor, keep: torch.Tensor, qp: QParams, p: float) -> torch.Tensor:
    """Each group's sum of ``|w - ŵ|^p`` over the weights ``keep`` marks, (R, G)."""
    err = (w - dequantize_codes(quantize_with_qparams(w, qp), qp)).abs().pow(p) * keep
    return _groups(err, qp.scheme).sum(-1)


def _groups(t: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """(R, G, L) view of ``t`` with the padding of a short last group set to 0."""
    g = to_groups(t, scheme)
    pad = g.shape[1] * g.shape[2] - t.shape[1] if scheme.granularity == "block" else 0
    if pad:
        g = g.clone()
        g.view(g.shape[0], -1)[:, t.shape[1]:] = 0.0
    return g


def _solve(w: torch.Tensor, keep: torch.Tensor, qp: QParams, *, p: float, iters: int,
           beta: float, kappa: float, refine_scale: bool
           ) -> QParams:
    """The half-quadratic iterations of the module docstring: each group's best scale and
    zero as stored, starting from ``qp``'s (round-to-nearest)."""
    scheme, qmax = qp.scheme, qp.scheme.element_format.qmax
    wg, kg = _groups(w, scheme), _groups(keep, scheme)
    live = (qp.scale != 0) & (kg.sum(-1) > 0)  # groups with something to fit
    s = torch.where(live, qp.scale, 1.0)
    z = qp.zero if scheme.zero_point == "int" else -qp.zero / s
    best_qp, best = qp, lp_error(w, keep, qp, p)
    n = kg.sum(-1).clamp(min=1.0)
    b = beta * s.pow(p - 2.0)  # beta for the error in steps of the group's scale
    for _ in range(iters):
        s3, z3 = s.unsqueeze(-1), z.unsqueeze(-1)
        c = torch.round(wg / s3 + z3).clamp_(0, qmax)
        x = wg - (c - z3) * s3
        e = torch.sign(x) * torch.relu(x.abs() - x.abs().pow(p - 1.0) / b.unsqueeze(-1))
        target = wg - e
        z = torch.where(live, ((c - target / s3) * kg).sum(-1) / n, z)
        if refine_scale:
            d = (c - z.unsqueeze(-1)) * kg
            den = d.square().sum(-1)
            fit = (target * d).sum(-1) / torch.where(den > 0, den, 1.0)
            s = torch.where(live & (den > 0) & (fit > 0), fit, s)
        b = b * kappa
        now = make_qparams(scheme, qp.shape, s, z)
        err = lp_error(w, keep, now, p)
        better = live & (err < best)
        best = torch.where(better, err, best)
        best_qp = _pick(better, now, best_qp)
    return best_qp


def _pick(mask: torch.Tensor, a: QParams, b: QParams) -> QParams:
    """Per group, ``a``'s scale and zero where ``mask`` is set, else ``b``'s."""
    def pick(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, x, y)

    return QParams(a.scheme, a.shape, pick(a.scale, b.scale), pick(a.zero, b.zero),
                   pick(a.stored_scale, b.stored_scale), pick(a.stored_zero, b.stored_zero))


@register_method("hqq")
def hqq(w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *, name: str,
        p: float = P, iters: int = ITERS, beta: float = BETA, kappa: float = KAPPA,
        refine_scale: bool = False) -> QTensor:
    """HQQ as a registered, data-free method; options ``p``, ``iters``, ``beta``, ``kappa``,
    ``refine_scale``."""
    return quantize_hqq(w, scheme, p=p, iters=iters, beta=beta, kappa=kappa,
                        refine_scale=refine_scale, name=name)
