"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights so that both can be
quantized to 8 bits.

For each group of Linears sharing an input (:mod:`lowbit.methods.folding`), with ``max|X_j|``
from calibration (``act_max``) and ``max|W_j|`` the largest weight of input column ``j`` over the
group's Linears, the smoothing factor is ``s_j = max|X_j|^α / max|W_j|^(1-α)`` (both clamped
to at least 1e-5, as the reference code does). The factors are folded into the block: the
Linears' columns are multiplied by ``s`` and the norm or Linear before them divided by it, so the
inputs become ``X / s``. The codes are then round-to-nearest on the smoothed weights, and a
static activation scale (``atensor``) is measured on the smoothed block (statistics are measured
again after folding). Option ``alpha`` (migration strength, default 0.5 as in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping
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

ALPHA = 0.5
FLOOR = 1e-5


def smoothing_factors(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float,
                      name: str = "weight") -> torch.Tensor:
    """``s = max|X|^α / max|W|^(1-α)`` per input column, float32 (see the module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: SmoothQuant option alpha={alpha} must be in [0, 1]")
    w_max = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    a = act_max.float().to(w_max.device).clamp(min=FLOOR)
    return a.pow(alpha) / w_max.clamp(min=FLOOR).pow(1.0 - alpha)


def smooth_prepare(block: nn.Module, stats: Mapping[str, LayerStats],
                   schemes: Mapping[str, Scheme], *, name: str, alpha: float = ALPHA) -> bool:
    """SmoothQuant's block step: fold the smoothing factors of every foldable group."""
    changed = False
    for group in fold_groups(block):
        if any(n not in stats for n in group.linears):
            continue
        weights = [block.get_submodule(n).weight for n in group.linears]
        s = smoothing_factors(stats[group.linears[0]].act_max, weights, alpha,
                              name=f"{name}.{group.linears[0]}")
        fold_scales(block, group, s)
        changed = True
    return changed


@register_method("smoothquant", needs={"act_max"}, prepare_block=smooth_prepare)
def smoothquant(w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *, name: str,
                alpha: float = ALPHA) -> QTensor:
    """SmoothQuant's per-Linear step (the block step folded the factors before): round to
    nearest. Option ``alpha`` (read by the block step)."""
    return quantize_rtn(check_weight(w, name), scheme, name=name)
