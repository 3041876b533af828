"""What sensitivity is measured over: units (a Linear, or the embedding with its tied head),
the candidate schemes as they apply to a unit, and the :class:`Sensitivity` table."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.core.ggml_blocks import fitting_scheme
from lowbit.core.scheme import Scheme
from lowbit.pipeline.embeddings import embedding_names


@dataclass
class Sensitivity:
    """Per unit: the modules it covers, its weights, and per scheme its KL and stored bytes.

    ``placed`` lists, per unit, the schemes whose KL was not measured but placed from the
    measured anchors by the proxy's ratio (:mod:`lowbit.budget.placement`); ``proxy`` holds the
    proxy value of every pair when it was computed."""

    units: dict[str, list[str]]
    params: dict[str, int]
    kl: dict[str, dict[str, float]] = field(default_factory=dict)
    nbytes: dict[str, dict[str, int]] = field(default_factory=dict)
    measured: int = 0  # (unit, scheme) pairs run this time; the rest came from the cache
    placed: dict[str, set[str]] = field(default_factory=dict)
    proxy: dict[str, dict[str, float]] = field(default_factory=dict)
    kl_se: dict[str, dict[str, float]] = field(default_factory=dict)  # standard error per token

    def pairs_measured(self) -> int:
        """How many (unit, scheme) KL values were measured (now or in the cache)."""
        return sum(len(per) - len(self.placed.get(u, ())) for u, per in self.kl.items())


def sensitivity_units(model: nn.Module) -> dict[str, list[str]]:
    """Unit name -> module names: every Linear, the embedding with its tied head as one unit."""
    emb, head = embedding_names(model)
    units = {emb: [emb] + ([head] if head else [])}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != head:
            units[name] = [name]
    return units


def unit_candidates(weight: torch.Tensor, candidates: list[Scheme]) -> list[Scheme]:
    """The candidates as they apply to ``weight`` (a ggml type that does not fit its rows
    becomes llama.cpp's fallback), without repeats."""
    out: list[Scheme] = []
    for s in candidates:
        s = fitting_scheme(s, weight.shape[1]) if s.ggml_type else s
        if s not in out:
            out.append(s)
    return out
