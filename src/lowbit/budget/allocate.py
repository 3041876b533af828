"""One choice per unit, total bytes within a budget, summed sensitivity as small as possible.

A multiple-choice knapsack, solved the Lagrangian way: for a price λ on bytes each unit takes
the choice minimising ``kl + λ·bytes`` (independently, so the sum is additive: interactions
between units are not modelled here, but measured afterwards by :mod:`lowbit.budget.refine`);
λ is bisected to the cheapest price whose total fits. The
leftover bytes are then spent greedily, the upgrade with the largest KL drop per byte first,
while any upgrade still fits. The result never exceeds the budget.
"""

from __future__ import annotations

from collections.abc import Mapping


def _pick(costs: Mapping[str, Mapping[str, int]], values: Mapping[str, Mapping[str, float]],
          lam: float) -> dict[str, str]:
    return {u: min(c, key=lambda s, u=u: (values[u][s] + lam * costs[u][s], costs[u][s]))
            for u, c in costs.items()}


def _total(costs: Mapping[str, Mapping[str, int]], choice: Mapping[str, str]) -> int:
    return sum(costs[u][s] for u, s in choice.items())


def allocate(costs: Mapping[str, Mapping[str, int]], values: Mapping[str, Mapping[str, float]],
             budget: int) -> dict[str, str]:
    """unit -> chosen option, with ``sum(costs) <= budget``; ValueError if nothing fits."""
    cheapest = {u: min(c, key=lambda s, u=u: (c[s], values[u][s])) for u, c in costs.items()}
    if _total(costs, cheapest) > budget:
        raise ValueError(f"budget {budget} bytes is below the smallest plan of these candidates "
                         f"({_total(costs, cheapest)} bytes)")
    lo, hi = 0.0, 1.0
    while _total(costs, _pick(costs, values, hi)) > budget:
        hi *= 4
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _total(costs, _pick(costs, values, mid)) > budget else (lo, mid)
    choice = _pick(costs, values, hi)
    return _spend_rest(costs, values, choice, budget)


def _spend_rest(costs: Mapping[str, Mapping[str, int]], values: Mapping[str, Mapping[str, float]],
                choice: dict[str, str], budget: int) -> dict[str, str]:
    """Apply the best-ratio upgrade that still fits until none does."""
    left = budget - _total(costs, choice)
    while True:
        best, best_ratio = None, 0.0
        for u, s in choice.items():
            for t, c in costs[u].items():
                extra, gain = c - costs[u][s], values[u][s] - values[u][t]
                if gain <= 0 or extra > left:
                    continue
                ratio = gain / max(extra, 1)
                if ratio > best_ratio:
                    best, best_ratio = (u, t), ratio
        if best is None:
            return choice
        u, t = best
        left -= costs[u][t] - costs[u][choice[u]]
        choice[u] = t
