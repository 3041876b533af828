"""A cheaper sensitivity: weight error weighted by the importance of each input column.

For a Linear, ``sum_ij x2[j] * (W - Q(W))_ij**2`` with ``x2`` the mean of x² per input column
over the calibration windows (llama.cpp's imatrix statistic): the expected squared error the
quantized weight adds to the layer's output per token. For the embedding, the mean squared
error of the rows the calibration tokens look up (plus the tied head's term). One forward pass
collects every ``x2``; no pass per candidate. :func:`rank_correlation` says how well it orders
(unit, scheme) pairs like the measured KL does; :func:`rank_correlations` also within a unit
(schemes of one tensor) and between units (tensors under one scheme).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowbit.budget.units import Sensitivity, sensitivity_units, unit_candidates
from lowbit.calibration.windows import Calibration
from lowbit.core.scheme import Scheme
from lowbit.methods.rtn import quantize_rtn


@torch.no_grad()
def input_x2(model: nn.Module, names: list[str], calibration: Calibration
             ) -> dict[str, torch.Tensor]:
    """Mean x² per input column of each named Linear over the calibration windows."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name: str):
        def record(_m: nn.Module, inputs: tuple, _out: torch.Tensor) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.square().sum(0)
            counts[name] += x.shape[0]
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for batch in calibration.batches():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / counts[n] for n in names}


def proxy_value(err: torch.Tensor, modules: list[str], emb: str,
                x2: dict[str, torch.Tensor], tokens: torch.Tensor) -> float:
    """The proxy of one unit from its squared weight error ``err`` (out, in)."""
    value = 0.0
    for module in modules:
        if module == emb:
            value += float(err[tokens].sum(1).mean())
        else:
            value += float((err @ x2[module]).sum())
    return value


def unit_x2(model: nn.Module, units: dict[str, list[str]], calibration: Calibration
            ) -> dict[str, torch.Tensor]:
    """:func:`input_x2` of every Linear in ``units`` (the embedding itself has none)."""
    emb = next(iter(units))
    return input_x2(model, [m for ms in units.values() for m in ms if m != emb], calibration)


def measure_proxy(model: nn.Module, calibration: Calibration, candidates: list[str],
                  *, progress: bool = True) -> Sensitivity:
    """The proxy for every unit and candidate, in a :class:`Sensitivity` (``kl`` holds it)."""
    from tqdm import tqdm

    schemes = [Scheme.parse(c) for c in candidates]
    units = sensitivity_units(model)
    emb = next(iter(units))
    x2 = unit_x2(model, units, calibration)
    tokens = calibration.tokens.reshape(-1)
    result = Sensitivity(units, {u: model.get_submodule(m[0]).weight.numel()
                                 for u, m in units.items()})
    todo = [(u, s) for u, m in units.items()
            for s in unit_candidates(model.get_submodule(m[0]).weight, schemes)]
    for unit, scheme in tqdm(todo, desc="proxy", unit="tensor", disable=not progress):
        w = model.get_submodule(units[unit][0]).weight.detach().float()
        qt = quantize_rtn(w, scheme, name=unit)
        value = proxy_value((qt.dequantize() - w).square(), units[unit], emb, x2, tokens)
        result.kl.setdefault(unit, {})[str(scheme)] = value
        result.nbytes.setdefault(unit, {})[str(scheme)] = qt.nbytes
        result.measured += 1
    return result


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists (nan when a side is constant)."""
    rx, ry = _ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_correlation(a: Sensitivity, b: Sensitivity) -> float:
    """Spearman's rank correlation of the (unit, scheme) pairs both measured."""
    pairs = [(a.kl[u][s], b.kl[u][s]) for u in a.kl for s in a.kl[u] if s in b.kl.get(u, {})]
    if len(pairs) < 3:
        raise ValueError("rank correlation needs at least 3 common (unit, scheme) pairs")
    x, y = zip(*pairs, strict=True)
    return spearman(list(x), list(y))


def rank_correlations(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]
                      ) -> dict[str, float]:
    """Spearman of ``a`` vs ``b`` (unit -> scheme -> value) over all common pairs, the mean
    within one unit (schemes of a tensor) and the mean between units (tensors under a scheme)."""
    common = {u: [s for s in a[u] if s in b.get(u, {})] for u in a}
    x = [a[u][s] for u, ss in common.items() for s in ss]
    y = [b[u][s] for u, ss in common.items() for s in ss]
    within = [spearman([a[u][s] for s in ss], [b[u][s] for s in ss])
              for u, ss in common.items() if len(ss) >= 3]
    schemes = sorted({s for ss in common.values() for s in ss})
    between = []
    for s in schemes:
        us = [u for u, ss in common.items() if s in ss]
        if len(us) >= 3:
            between.append(spearman([a[u][s] for u in us], [b[u][s] for u in us]))
    return {"pairs": spearman(x, y) if len(x) >= 3 else float("nan"), "n_pairs": len(x),
            "within_unit": float(np.nanmean(within)) if within else float("nan"),
            "between_units": float(np.nanmean(between)) if between else float("nan")}
