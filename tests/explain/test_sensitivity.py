"""The sensitivity rank is read from the budget's cache, never measured by explain."""

from __future__ import annotations

import torch

from lowbit.calibration import Calibration
from lowbit.explainer.sensitivity import cached_ranks, ranks_from_cache

SCHEMES = ["int4-sym-g32", "int2-asym-g32"]


def test_ranks_from_cache():
    stored = {"a": {"s": {"kl": 0.5, "nbytes": 1}, "t": {"kl": 0.1, "nbytes": 1},
                    "u": {"proxy": 0.4, "nbytes": 1}},  # placed by the proxy: not ranked
              "b": {"s": {"kl": 0.9, "nbytes": 1}},
              "c": {"s": {"kl": 0.2, "nbytes": 1}, "t": {"kl": 0.3, "nbytes": 1}}}
    ranks = {r.scheme: (r.rank, r.units, r.kl) for r in ranks_from_cache(stored, "a")}
    assert ranks == {"s": (2, 3, 0.5), "t": (2, 2, 0.1)}
    assert ranks_from_cache(stored, "missing") == []


def test_rank_comes_from_the_budgets_cache(tiny_hf_dir, lowbit_cache):
    from lowbit.budget.sensitivity import measure_sensitivity
    from lowbit.models import load_model

    g = torch.Generator().manual_seed(3)
    cal = Calibration(tokens=torch.randint(0, 250, (2, 24), generator=g), batch_size=2)
    name = "model.layers.0.mlp.down_proj.weight"
    ranks, note = cached_ranks(tiny_hf_dir, name, calibration=cal)
    assert ranks == [] and "no cached measurement" in note
    model, _ = load_model(tiny_hf_dir)
    sens = measure_sensitivity(model, cal, SCHEMES, progress=False, anchors=None)
    ranks, note = cached_ranks(tiny_hf_dir, name, calibration=cal)
    assert "budget's cache" in note and [r.scheme for r in ranks] == SCHEMES
    unit = "model.layers.0.mlp.down_proj"
    for r in ranks:
        kls = [v[r.scheme] for v in sens.kl.values() if r.scheme in v]
        assert r.kl == sens.kl[unit][r.scheme] and r.units == len(kls)
        assert r.rank == 1 + sum(k > r.kl for k in kls)
