"""AWQ (Lin et al., 2023): activation-aware per-input-channel scales, folded into the model, then
a per-group clipping search; the codes are round-to-nearest on the scaled, clipped weight.

Scale search, per group of Linears that share an input (q/k/v; gate/up; o; down): with
``H = XᵀX/N`` from calibration, the channel magnitude is ``a = sqrt(diag H)``, the RMS of each
input channel (the paper uses the mean of ``|x|``; the RMS needs no extra statistic). For
``α`` in ``0, 1/grid, ..., 1``: ``s = max(a^α, 1e-4)`` (AWQ's floor), normalised by
``sqrt(max s · min s)``; the loss is ``Σ trace(ΔW H ΔWᵀ)`` over the group with
``ΔW = W - Q(W·diag s)·diag(s)⁻¹``, which is ``‖ΔW Xᵀ‖²/N``: no activation is kept. ``α = 0``
(``s = 1``, plain RTN) is on the grid and wins ties, so the chosen loss is never above RTN's.

Folding (:mod:`lowbit.methods.folding`, shared with SmoothQuant; the model's function is
unchanged before quantization): the Linears' input columns are multiplied by ``s`` and the
operation before them (a norm or a Linear) divided by it. A group whose modules are missing
(fused ``qkv_proj``, GQA for v/o) or not all planned is left unscaled.

Clipping (per Linear, on the folded weight and its re-measured Hessian): each group's range is
shrunk to ``±r·absmax`` for ``r`` from 1 down to ``max_shrink`` in ``clip_steps`` steps, and each
(row, group) keeps the ``r`` of least ``δ H_gg δᵀ`` (``H_gg`` the group's diagonal block, as
AWQ's per-group output error). With a tensor scale or double-quantized scales a group's scale
depends on the others, so the per-group choice is then approximate; schemes that keep outliers
skip clipping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from lowbit.core.grouping import check_weight
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.methods.folding import fold_groups, fold_scales
from lowbit.methods.registry import register_method
from lowbit.methods.rtn import quantize_rtn

if TYPE_CHECKING:
    from lowbit.calibration.stats import LayerStats

GRID = 20  # α steps over [0, 1] (AWQ's n_grid)
SCALE_FLOOR = 1e-4  # AWQ's clamp on a^α, so a channel never seen gets no zero scale
MAX_SHRINK = 0.5  # AWQ's auto_clip max_shrink
CLIP_STEPS = 10  # r = 1.0, 0.95, ..., 0.5


def output_loss(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``trace((w - q) h (w - q)ᵀ)``: the mean squared output error over the calibration inputs."""
    d = (w - q).to(h.dtype)
    return ((d @ h) * d).sum()


def rtn_weight(w: torch.Tensor, scheme: Scheme, name: str) -> torch.Tensor:
    """``w`` rounded to nearest under ``scheme``, dequantized (float32)."""
    return quantize_rtn(w, scheme, name=name).dequantize().float()


def channel_scales(h: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's ``s`` for exponent ``alpha`` from the Hessian's diagonal (see the module docstring)."""
    a = torch.diagonal(h).float().clamp(min=0).sqrt()
    s = a.pow(alpha).clamp(min=SCALE_FLOOR)
    return s / (s.max() * s.min()).sqrt()


def search_scales(weights: Sequence[torch.Tensor], schemes: Sequence[Scheme], h: torch.Tensor,
                  *, grid: int = GRID, name: str = "weight"
                  ) -> tuple[torch.Tensor, float, list[float]]:
    """The scales of least output loss for Linears sharing the input of Hessian ``h``: (s, α,
    the loss at every α of the grid)."""
    if grid < 1:
        raise ValueError(f"{name}: AWQ option grid={grid} must be at least 1")
    h = h.float()
    best, losses = None, []
    for i in range(grid + 1):
        s = channel_scales(h, i / grid)
        loss = sum(float(output_loss(w.float(), rtn_weight(w.float() * s, sc, name) / s, h))
                   for w, sc in zip(weights, schemes))
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, s, i / grid)
    return best[1], best[2], losses


def awq_prepare(block: nn.Module, stats: Mapping[str, LayerStats],
                schemes: Mapping[str, Scheme], *, name: str, grid: int = GRID) -> bool:
    """AWQ's block step: search and fold the scales of every foldable group of ``block``."""
    changed = False
    for group in fold_groups(block):
        if any(n not in stats for n in group.linears):
            continue
        weights = [block.get_submodule(n).weight.detach() for n in group.linears]
        where = f"{name}.{group.linears[0]}"
        s, alpha, _ = search_scales(weights, [schemes[n] for n in group.linears],
                                    stats[group.linears[0]].hessian, grid=grid, name=where)
        if alpha > 0:
            fold_scales(block, group, s)
            changed = True
    return changed


def clip_weight(w: torch.Tensor, scheme: Scheme, h: torch.Tensor, *,
                clip_steps: int = CLIP_STEPS, max_shrink: float = MAX_SHRINK,
                name: str = "weight") -> torch.Tensor:
    """``w`` with each (row, group) clipped to the ``±r·absmax`` of least output loss."""
    if not 0 < max_shrink <= 1 or clip_steps < 1:
        raise ValueError(f"{name}: AWQ options need 0 < max_shrink <= 1 and clip_steps >= 1, "
                         f"got max_shrink={max_shrink}, clip_steps={clip_steps}")
    out, n = w.shape
    g = scheme.group_size(n)
    wg = w.float().reshape(out, n // g, g)
    hb = torch.stack([h[i:i + g, i:i + g] for i in range(0, n, g)]).float()
    m = wg.abs().amax(-1, keepdim=True)
    best, best_loss = wg, None
    for i in range(clip_steps + 1):
        r = 1.0 - i * (1.0 - max_shrink) / clip_steps
        c = torch.minimum(torch.maximum(wg, -r * m), r * m)
        d = wg - rtn_weight(c.reshape(out, n), scheme, name).reshape(out, n // g, g)
        loss = torch.einsum("ogi,gij,ogj->og", d, hb, d)
        if best_loss is None:
            best_loss = loss
            continue
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best = torch.where(better[..., None], c, best)
    return best.reshape(out, n).to(w.dtype)


@register_method("awq", needs={"hessian"}, prepare_block=awq_prepare)
def awq(w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *, name: str,
        grid: int = GRID, clip: bool = True, clip_steps: int = CLIP_STEPS,
        max_shrink: float = MAX_SHRINK) -> QTensor:
    """AWQ's per-Linear step (the scales are folded by the block step before): the clipping
    search, then round-to-nearest. Options: ``grid`` (α steps), ``clip``, ``clip_steps``,
    ``max_shrink``."""
    w = check_weight(w, name)
    if clip and scheme.outliers is None and w.shape[1] % scheme.group_size(w.shape[1]) == 0:
        w = clip_weight(w, scheme, stats.hessian.to(w.device), clip_steps=clip_steps,
                        max_shrink=max_shrink, name=name)
    return quantize_rtn(w, scheme, name=name)
