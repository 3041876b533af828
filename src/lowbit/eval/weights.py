"""Weight error of a quantized tensor against the original: how far the stored grid moved it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from lowbit.core.grouping import check_weight
from lowbit.core.qtensor import QTensor


@dataclass(frozen=True)
class WeightError:
    """Error statistics of one tensor.

    ``rel_l2`` = ||w - q|| / ||w||; ``max_abs`` = max |w - q|; ``sqnr_db`` = 10 log10(||w||^2 /
    ||w - q||^2) (inf when exact); ``exact`` is True when every weight came back unchanged,
    i.e. the weight already lay on the scheme's grid.
    """

    rel_l2: float
    max_abs: float
    sqnr_db: float
    exact: bool
    numel: int

    def to_dict(self) -> dict:
        return asdict(self)


def weight_error(w: torch.Tensor, qt: QTensor | torch.Tensor, name: str = "weight") -> WeightError:
    """Compare the original ``w`` with a QTensor (or an already dequantized tensor)."""
    w = check_weight(w, name)
    q = qt.dequantize() if isinstance(qt, QTensor) else qt.to(torch.float32)
    if q.shape != w.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(w.shape)} vs {tuple(q.shape)}")
    diff = (w - q).double()
    err2 = float(diff.square().sum())
    ref2 = float(w.double().square().sum())
    rel = math.sqrt(err2 / ref2) if ref2 > 0 else (0.0 if err2 == 0 else math.inf)
    sqnr = math.inf if err2 == 0 else (10 * math.log10(ref2 / err2) if ref2 > 0 else -math.inf)
    return WeightError(
        rel_l2=rel, max_abs=float(diff.abs().max()), sqnr_db=sqnr, exact=err2 == 0,
        numel=w.numel(),
    )
