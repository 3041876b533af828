"""A cheaper sensitivity: weight error weighted by the importance of each input column.

For a Linear, ``sum_ij x2[j] * (W - Q(W))_ij**2`` with ``x2`` the mean of x² per input column
over the calibration windows (llama.cpp's imatrix statistic): the expected squared error the
quantized weight adds to the layer's output per token. For the embedding, the mean squared
error of the rows the calibration tokens look up (plus the tied head's term). One forward pass
collects every ``x2``; no pass per candidate. :func:`rank_correlation` says how well it orders
(unit, scheme) pairs like the measured KL does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowbit.budget.sensitivity import Sensitivity, sensitivity_units, unit_candidates
from lowbit.calibration.windows import Calibration
from lowbit.core.scheme import Scheme
from lowbit.methods.rtn import quantize_rtn


@torch.no_grad()
def _input_x2(model: nn.Module, names: list[str], calibration: Calibration
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


def measure_proxy(model: nn.Module, calibration: Calibration, candidates: list[str],
                  *, progress: bool = True) -> Sensitivity:
    """The proxy for every unit and candidate, in a :class:`Sensitivity` (``kl`` holds it)."""
    from tqdm import tqdm

    schemes = [Scheme.parse(c) for c in candidates]
    units = sensitivity_units(model)
    emb = next(iter(units))
    linears = [m for ms in units.values() for m in ms if m != emb]
    x2 = _input_x2(model, linears, calibration)
    tokens = calibration.tokens.reshape(-1)
    result = Sensitivity(units, {u: model.get_submodule(m[0]).weight.numel()
                                 for u, m in units.items()})
    todo = [(u, s) for u, m in units.items()
            for s in unit_candidates(model.get_submodule(m[0]).weight, schemes)]
    for unit, scheme in tqdm(todo, desc="proxy", unit="tensor", disable=not progress):
        w = model.get_submodule(units[unit][0]).weight.detach().float()
        qt = quantize_rtn(w, scheme, name=unit)
        err = (qt.dequantize() - w).square()
        value = 0.0
        for module in units[unit]:
            if module == emb:
                value += float(err[tokens].sum(1).mean())
            else:
                value += float((err @ x2[module]).sum())
        result.kl.setdefault(unit, {})[str(scheme)] = value
        result.nbytes.setdefault(unit, {})[str(scheme)] = qt.nbytes
        result.measured += 1
    return result


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def rank_correlation(a: Sensitivity, b: Sensitivity) -> float:
    """Spearman's rank correlation of the (unit, scheme) pairs both measured."""
    pairs = [(a.kl[u][s], b.kl[u][s]) for u in a.kl for s in a.kl[u] if s in b.kl.get(u, {})]
    if len(pairs) < 3:
        raise ValueError("rank correlation needs at least 3 common (unit, scheme) pairs")
    x, y = (np.array(v, dtype=np.float64) for v in zip(*pairs, strict=True))
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
