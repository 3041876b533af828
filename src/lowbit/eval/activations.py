"""What an evaluation records about quantized activations: the schemes' activation settings and,
for LLM.int8 layers (a threshold), how many input features each call took out as outliers.

The count uses the kernels' own test (:func:`lowbit.core.activations.outlier_columns`) on each
call's input, whichever kernel runs. A call is one forward of a layer: one batch of evaluation
windows, so the per-call count depends on how many tokens a call holds; the record says the
tokens per call too. ``union`` is the number of features flagged in at least one call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.core.activations import outlier_columns


@dataclass
class _LayerCount:
    threshold: float
    calls: int = 0
    tokens: int = 0
    flagged: int = 0
    union: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        cols = outlier_columns(x.detach(), self.threshold)
        self.calls += 1
        self.tokens += x.numel() // x.shape[-1]
        self.flagged += int(cols.sum())
        self.union = cols if self.union is None else self.union | cols

    def to_dict(self) -> dict[str, Any]:
        calls = max(self.calls, 1)
        return {"threshold": self.threshold, "calls": self.calls,
                "tokens_per_call": self.tokens / calls, "outliers_per_call": self.flagged / calls,
                "outliers_union": 0 if self.union is None else int(self.union.sum())}


@dataclass
class OutlierCounts:
    """Per LLM.int8 layer: outlier input features per call and over the whole run."""

    layers: dict[str, _LayerCount] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any] | None:
        if not self.layers:
            return None
        per = {n: c.to_dict() for n, c in self.layers.items()}
        calls = [v["outliers_per_call"] for v in per.values()]
        unions = [v["outliers_union"] for v in per.values()]
        return {"mean_outliers_per_call": sum(calls) / len(calls),
                "max_outliers_per_call": max(calls),
                "mean_outliers_union": sum(unions) / len(unions), "layers": per}


def activation_settings(model: nn.Module) -> dict[str, Any] | None:
    """The distinct activation settings of the model's QuantLinears (format, granularity,
    threshold) with the number of layers of each; None for a weight-only model."""
    from lowbit.nn import quantized_layers

    seen: dict[str, dict[str, Any]] = {}
    for layer in quantized_layers(model).values():
        act = layer.scheme.activations
        if act is None:
            continue
        key = "-".join(act.tokens())
        seen.setdefault(key, {**act.to_json(), "layers": 0})["layers"] += 1
    return seen or None


@contextmanager
def count_outliers(model: nn.Module) -> Iterator[OutlierCounts]:
    """Count LLM.int8 outlier features of every QuantLinear with a threshold while in the block."""
    from lowbit.nn import quantized_layers

    counts = OutlierCounts()
    handles = []
    for name, layer in quantized_layers(model).items():
        act = layer.scheme.activations
        if act is None or act.threshold is None:
            continue
        c = counts.layers[name] = _LayerCount(act.threshold)
        handles.append(layer.register_forward_pre_hook(lambda _m, args, c=c: c.add(args[0])))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
