"""Interactions: a second, measured pass over an allocated plan.

The allocation (:mod:`lowbit.budget.allocate`) takes KL as additive over units: each unit's KL
was measured with every other tensor in float. Quantizing them together, errors can compound or
cancel. This pass measures what the additive model only predicts, and cheaply:

1. the whole plan is applied (weights replaced by their quantized values) and its KL against
   the float model measured on the calibration windows: ``measured_kl`` beside ``summed_kl``;
2. candidate swaps that keep the plan within its budget (one unit one scheme up, another one
   scheme down, by stored bytes) are ranked by the additive model's predicted change; the
   ``swaps`` most promising — those the additive model rates nearly free, where an interaction
   can tip the balance — are measured *in the plan's context* (the quantized model's hidden
   states, from the earlier unit's block on);
3. the swap with the lowest measured KL is applied if it beats the plan, and the round repeats
   (up to ``rounds``) until none does.

Off by default (``lowbit quantize --refine-swaps N``); each round costs one full pass plus
``swaps`` suffix runs. The plan's ``details["refine"]`` records every figure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.budget.kl import KLReference
from lowbit.budget.plan import choice_of, plan_from_choice
from lowbit.budget.suffix import SuffixRunner
from lowbit.budget.units import Sensitivity
from lowbit.calibration.windows import Calibration
from lowbit.core.scheme import Scheme
from lowbit.methods.rtn import quantize_rtn
from lowbit.pipeline.tensor_plan import TensorPlan


def _neighbours(nbytes: dict[str, int], scheme: str) -> tuple[str | None, str | None]:
    """The next cheaper and the next dearer scheme of a unit, by bytes."""
    order = sorted(nbytes, key=lambda s: (nbytes[s], s))
    i = order.index(scheme)
    return (order[i - 1] if i > 0 else None), (order[i + 1] if i + 1 < len(order) else None)


def candidate_swaps(sens: Sensitivity, choice: dict[str, str], slack: int, count: int
                    ) -> list[tuple[float, dict[str, str]]]:
    """Up to ``count`` (predicted KL change, {unit: new scheme}) that fit ``slack`` bytes:
    one unit up a scheme and another down one, the smallest predicted change first."""
    ups, downs = [], []
    for u, s in choice.items():
        lower, upper = _neighbours(sens.nbytes[u], s)
        if upper is not None:
            ups.append((sens.kl[u][upper] - sens.kl[u][s],
                        sens.nbytes[u][upper] - sens.nbytes[u][s], u, upper))
        if lower is not None:
            downs.append((sens.kl[u][lower] - sens.kl[u][s],
                          sens.nbytes[u][lower] - sens.nbytes[u][s], u, lower))
    out = [(dk_u + dk_d, {u: t, v: r}) for dk_u, db_u, u, t in ups
           for dk_d, db_d, v, r in downs if u != v and db_u + db_d <= slack]
    out.sort(key=lambda x: x[0])
    return out[:count]


class _PlanModel:
    """The model with a plan's quantized weights swapped in (restored by :meth:`restore`)."""

    def __init__(self, model: nn.Module, sens: Sensitivity) -> None:
        self.model, self.sens = model, sens
        self.weights = {u: model.get_submodule(m[0]).weight for u, m in sens.units.items()}
        self.original = {u: w.data for u, w in self.weights.items()}
        self.cache: dict[tuple[str, str], torch.Tensor] = {}

    def set(self, unit: str, scheme: str) -> None:
        key = (unit, scheme)
        if key not in self.cache:
            w = self.original[unit]
            self.cache[key] = quantize_rtn(w, Scheme.parse(scheme), name=unit).dequantize(w.dtype)
        self.weights[unit].data = self.cache[key]

    def restore(self) -> None:
        for u, w in self.weights.items():
            w.data = self.original[u]


def refine_choice(model: nn.Module, calibration: Calibration, sens: Sensitivity,
                  choice: dict[str, str], slack: int, *, swaps: int = 8, rounds: int = 2,
                  progress: bool = True) -> tuple[dict[str, str], dict[str, Any]]:
    """The choice after measured swaps (see the module), and what was measured."""
    from tqdm import tqdm

    batches = calibration.batches()
    with torch.no_grad():
        ref = KLReference([model(b).logits.float().reshape(-1, model.config.vocab_size)
                           for b in batches])
    pm, choice = _PlanModel(model, sens), dict(choice)
    log: dict[str, Any] = {"swaps_per_round": swaps, "applied": [], "tried": 0}
    try:
        for u, s in choice.items():
            pm.set(u, s)
        for _ in range(rounds):
            runner = SuffixRunner(model, batches)  # hidden states of the plan as it is now
            current = ref.mean(runner.logits(None))[0]
            log.setdefault("measured_kl", current)
            best = None
            todo = candidate_swaps(sens, choice, slack, swaps)
            for predicted, swap in tqdm(todo, desc="refine", disable=not progress):
                for u, s in swap.items():
                    pm.set(u, s)
                start = runner.start([m for u in swap for m in sens.units[u]])
                kl = ref.mean(runner.logits(start))[0]
                for u in swap:
                    pm.set(u, choice[u])
                log["tried"] += 1
                if kl < current and (best is None or kl < best[0]):
                    best = (kl, swap, predicted)
            if best is None:
                break
            slack -= sum(sens.nbytes[u][s] - sens.nbytes[u][choice[u]]
                         for u, s in best[1].items())
            choice.update(best[1])
            for u, s in best[1].items():
                pm.set(u, s)
            log["applied"].append({"swap": best[1], "measured_kl": best[0],
                                   "predicted_change": best[2]})
        log["final_kl"] = log["applied"][-1]["measured_kl"] if log["applied"] else current
    finally:
        pm.restore()
    return choice, log


def refine_plan(model: nn.Module, calibration: Calibration, sens: Sensitivity,
                plan: TensorPlan, *, swaps: int = 8, rounds: int = 2,
                progress: bool = True) -> TensorPlan:
    """:func:`refine_choice` on a plan of :func:`lowbit.budget.plan.budget_plan` (same
    budget); ``details["refine"]`` holds the measured KL before and after and the swaps."""
    slack = plan.details["budget_bytes"] - plan.details["predicted_bytes"]
    choice, log = refine_choice(model, calibration, sens, choice_of(plan, sens), slack,
                                swaps=swaps, rounds=rounds, progress=progress)
    return plan_from_choice(sens, choice, {**plan.details, "refine": log})
