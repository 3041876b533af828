"""Importance-weighted round-to-nearest (llama.cpp's imatrix idea) for lowbit's own schemes.

Each input column ``j`` of a Linear has an importance ``imp_j``: the mean of ``x_j^2`` over the
calibration tokens (``LayerStats.x2_mean``, or a llama.cpp imatrix file, whose entries are the
same quantity). The output error of a row is ``sum_j imp_j (w_j - ŵ_j)^2`` when the inputs are
uncorrelated, so instead of the range rule alone each group chooses, among candidate scales, the
one with the lowest importance-weighted squared error over the group. Codes are then plain
round-to-nearest on the chosen scales.

Candidates are made by handing ``choose_qparams`` a transformed copy of the weight, so every
scheme's own rules (scale format rounding, E8M0, NVFP4's tensor scale, ``zpint``) apply as is:

* symmetric: ``f * w`` for each clipping factor ``f`` in ``1, 1 - s/grid, ..., 1 - max_shrink``
  (scale ``f`` times the range rule's). An E8M0 scale (MX) only takes power-of-two steps, so
  its candidates are ``f = 2^k`` with ``1 - max_shrink <= 2^k <= 2``: one step down (clip) and
  one step up (stop saturating the elements above the format's maximum, which the OCP rule does);
* asymmetric (llama.cpp's min/max shrink): the range is narrowed by ``f`` keeping the minimum,
  keeping the maximum, or about the middle (``a + f (w - a)`` with anchor ``a`` the group's
  min, max or mid-range); ``zpint`` then widens the range to hold 0 as round-to-nearest does.

``f = 1`` is round-to-nearest itself (the weight untransformed), and a group keeps a candidate
only when it is strictly better, so no group's weighted error is ever above RTN's and a group
whose importance is zero keeps RTN's scale. NVFP4's tensor scale stays RTN's. The chosen
transforms are applied group by group and the scales chosen once more on the result, which
gives the same per-group scales; with ``dq`` (QLoRA) the chosen scales are double-quantized
together, so that last rounding is not part of the search.

A ggml type (``q4_k``) is quantized by llama.cpp's own importance-weighted quantizer
(``lowbit.ggml``, ``quantize_row_<type>_impl``), so its bytes are what ``llama-quantize
--imatrix`` writes for the same tensor and importance, and a plan of ggml types exports as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lowbit.core import ggml_blocks
from lowbit.core.grouping import check_weight, to_groups
from lowbit.core.qparams import QParams, choose_qparams, dequantize_codes, quantize_with_qparams
from lowbit.core.qtensor import QTensor
from lowbit.core.range import QuantRangeWarning
from lowbit.core.scheme import Scheme
from lowbit.methods.registry import register_method
from lowbit.methods.rtn import split_outliers

if TYPE_CHECKING:
    from lowbit.calibration.stats import LayerStats

GRID, MAX_SHRINK = 20, 0.5  # 21 clipping factors from 1 down to 0.5 (AWQ's clip search range)
ANCHORS = ("min", "max", "mid")  # asymmetric: which end of the range stays put

Transform = Callable[[torch.Tensor], torch.Tensor]  # groups (R, G, L) -> transformed groups


def check_importance(importance: torch.Tensor, in_features: int, name: str) -> torch.Tensor:
    """``importance`` as a float32 (in_features,) vector after checking it is finite, >= 0 and
    one value per input column; errors name the layer."""
    if not isinstance(importance, torch.Tensor):
        raise TypeError(f"{name}: importance must be a tensor, got {type(importance).__name__}")
    imp = importance.detach().reshape(-1)
    if imp.numel() != in_features:
        raise ValueError(f"{name}: importance has {imp.numel()} values, but the weight has "
                         f"{in_features} input columns")
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
        raise ValueError(f"{name}: importance must be finite and >= 0 (a mean of x^2)")
    return imp.to(torch.float32)


def factors(scheme: Scheme, grid: int, max_shrink: float) -> list[float]:
    """The clipping factors tried, 1 first (see the module docstring)."""
    if scheme.scale_format == "e8m0":
        out, k = [1.0, 2.0], -1
        while 2.0 ** k >= 1.0 - max_shrink - 1e-12:
            out.append(2.0 ** k)
            k -= 1
        return out
    return [1.0 - max_shrink * i / grid for i in range(grid + 1)]


def candidates(scheme: Scheme, grid: int, max_shrink: float) -> list[Transform | None]:
    """The group transforms tried, None (the weight as it is: RTN) first."""
    out: list[Transform | None] = [None]
    for f in factors(scheme, grid, max_shrink)[1:]:
        if scheme.symmetric:
            out.append(lambda g, f=f: g * f)
            continue
        for anchor in ANCHORS:
            out.append(lambda g, f=f, a=anchor: _shrink(g, f, a))
    return out


def _shrink(g: torch.Tensor, f: float, anchor: str) -> torch.Tensor:
    """Each group's range narrowed by ``f`` about its min, max or mid-range."""
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    a = lo if anchor == "min" else hi if anchor == "max" else (lo + hi) / 2
    return a + f * (g - a)


def _ungroup(g: torch.Tensor, w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Groups (R, G, L) of ``w`` back to its (out, in) shape, the padding dropped."""
    if scheme.granularity == "tensor":
        return g.reshape(w.shape)
    return g.reshape(g.shape[0], -1)[:, : w.shape[1]].contiguous()


def apply(w: torch.Tensor, scheme: Scheme, transform: Transform | None) -> torch.Tensor:
    """``w`` (out, in) with ``transform`` applied to every scale group."""
    return w if transform is None else _ungroup(transform(to_groups(w, scheme)), w, scheme)


def group_error(w: torch.Tensor, weight: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Each group's ``sum weight * (w - ŵ)^2`` under ``qp``, (R, G) (``weight`` is (out, in):
    importance times the mask of weights that are quantized)."""
    err = (w - dequantize_codes(quantize_with_qparams(w, qp), qp)).square_().mul_(weight)
    g = to_groups(err, qp.scheme)
    pad = g.shape[1] * g.shape[2] - w.shape[1] if qp.scheme.granularity == "block" else 0
    if pad:  # the short last group's padding repeats a weight: leave it out
        g = g.clone()
        g.view(g.shape[0], -1)[:, w.shape[1]:] = 0.0
    return g.sum(-1)


def quantize_weighted(w: torch.Tensor, scheme: Scheme | str, importance: torch.Tensor, *,
                      grid: int = GRID, max_shrink: float = MAX_SHRINK,
                      name: str = "weight") -> QTensor:
    """Quantize ``w`` (out, in) with each group's scale chosen to minimise the
    importance-weighted squared error (see the module docstring)."""
    scheme = Scheme.parse(scheme)
    if grid < 1 or not 0 < max_shrink < 1:
        raise ValueError(f"{name}: rtn-imatrix needs grid >= 1 and 0 < max_shrink < 1; got "
                         f"grid={grid}, max_shrink={max_shrink}")
    w = check_weight(w, name)
    imp = check_importance(importance, w.shape[1], name).to(w.device)
    outliers = None
    keep = torch.ones_like(w)
    if scheme.outliers is not None:
        w, *outliers = split_outliers(w, scheme)
        keep.view(-1)[outliers[0].long()] = 0.0
    weight = keep * imp.unsqueeze(0)
    base = choose_qparams(w, scheme, name=name)
    ts = base.tensor_scale
    best = group_error(w, weight, base)
    choice = torch.zeros(best.shape, dtype=torch.long, device=w.device)
    tried = candidates(scheme, grid, max_shrink)
    for k, transform in enumerate(tried[1:], start=1):
        with warnings.catch_warnings():  # RTN's choice above already said what saturates
            warnings.simplefilter("ignore", QuantRangeWarning)
            qp = choose_qparams(apply(w, scheme, transform), scheme, name=name,
                                tensor_scale=ts)
        err = group_error(w, weight, qp)
        better = err < best
        best = torch.where(better, err, best)
        choice = torch.where(better, k, choice)
    chosen = _assemble(w, scheme, tried, choice)
    qp = choose_qparams(chosen, scheme, name=name, tensor_scale=ts)
    return QTensor.from_codes(quantize_with_qparams(w, qp), qp,
                              outliers=None if outliers is None else tuple(outliers))


def _assemble(w: torch.Tensor, scheme: Scheme, tried: list[Transform | None],
              choice: torch.Tensor) -> torch.Tensor:
    """``w`` with each group transformed by its chosen candidate (``choice``: (R, G) indices
    into ``tried``), so that choosing scales on it gives every group its chosen scale."""
    groups = to_groups(w, scheme)
    out = groups.clone()
    pick = choice.reshape(groups.shape[0], groups.shape[1], 1)
    for k in choice.unique().tolist():
        if k:
            out = torch.where(pick == k, tried[k](groups), out)
    return _ungroup(out, w, scheme)


def quantize_weighted_ggml(w: torch.Tensor, scheme: Scheme, importance: torch.Tensor, *,
                           name: str = "weight") -> QTensor:
    """``w`` in a ggml type by llama.cpp's importance-weighted quantizer (what
    ``llama-quantize --imatrix`` writes for this tensor and importance; Q8_0 ignores it)."""
    w = check_weight(w, name)
    imp = check_importance(importance, w.shape[1], name)
    qt = QTensor(scheme=scheme, shape=(int(w.shape[0]), int(w.shape[1])),
                 codes=ggml_blocks.quantize_blocks(w, scheme, name, importance=imp))
    qt.validate(name)
    return qt


@register_method("rtn-imatrix", needs={"x2_mean"}, ggml=True)
def rtn_imatrix(w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *, name: str,
                grid: int = GRID, max_shrink: float = MAX_SHRINK) -> QTensor:
    """Importance-weighted scale search as a registered method; the importance is the
    calibration's (or an imatrix file's) ``x2_mean``. Options ``grid``, ``max_shrink`` (a
    ggml type uses llama.cpp's own weighted search instead, and ignores them)."""
    assert stats is not None and stats.x2_mean is not None  # the registry checks needs
    if scheme.ggml_type:
        return quantize_weighted_ggml(w, scheme, stats.x2_mean, name=name)
    return quantize_weighted(w, scheme, stats.x2_mean, grid=grid, max_shrink=max_shrink,
                             name=name)
