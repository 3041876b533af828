"""Per-Linear calibration statistics, accumulated from forward hooks one batch at a time.

For a Linear whose inputs over all calibration tokens are the rows ``x_t`` (t = 1..N) of X:

* ``x2_mean[j]  = (1/N) sum_t x_t[j]^2``        (AWQ-style channel norms; float64, ``in`` values)
* ``act_max[j]  = max_t |x_t[j]|``              (exact; float32)
* ``hessian     = (1/N) X^T X``                 (GPTQ's H up to its factor 2; ``in x in``)

The Hessian is kept as a float32 running average, as llm-compressor's ``accumulate_hessian``
does: float64 would double its ``in^2`` memory (28672^2 x 8 bytes = 6.6 GB for one 70B
down_proj), and the rounding of the average (about N x 2^-24 relative, N tokens) is far below
the 1 % diagonal damping GPTQ adds before factorising it. The two vectors are cheap, so they are
summed in float64. Only the statistics a method asks for are collected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerStats:
    """What calibration measured at one Linear's input (None: not collected)."""

    n_tokens: int
    x2_mean: torch.Tensor | None = None  # (in_features,) float64
    act_max: torch.Tensor | None = None  # (in_features,) float32
    hessian: torch.Tensor | None = None  # (in_features, in_features) float32

    def missing(self, needs: Iterable[str]) -> set[str]:
        """Which of the statistics ``needs`` this object does not hold."""
        return {n for n in needs if getattr(self, n, None) is None}


class StatsAccumulator:
    """Running statistics of the inputs of one Linear (see the module docstring)."""

    def __init__(self, in_features: int, needs: Iterable[str], *,
                 device: torch.device | str = "cpu") -> None:
        self.in_features = in_features
        self.needs = frozenset(needs)
        self.n_tokens = 0
        dev = torch.device(device)
        self._x2_sum = torch.zeros(in_features, dtype=torch.float64, device=dev) \
            if "x2_mean" in self.needs else None
        self._act_max = torch.zeros(in_features, dtype=torch.float32, device=dev) \
            if "act_max" in self.needs else None
        self._hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=dev) \
            if "hessian" in self.needs else None

    def add(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs (any leading shape, last dim ``in_features``) into the stats."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer {self.in_features}")
        x = x.detach().reshape(-1, self.in_features)
        m = x.shape[0]
        if m == 0:
            return
        if self._x2_sum is not None:
            self._x2_sum += x.double().square().sum(0)
        if self._act_max is not None:
            torch.maximum(self._act_max, x.float().abs().amax(0), out=self._act_max)
        if self._hessian is not None:
            xf = x.float()
            self._hessian.mul_(self.n_tokens / (self.n_tokens + m))
            self._hessian.addmm_(xf.T, xf, alpha=1.0 / (self.n_tokens + m))
        self.n_tokens += m

    def result(self) -> LayerStats:
        """The statistics so far; ValueError when no token was seen."""
        if self.n_tokens == 0:
            raise ValueError("no calibration tokens reached this layer")
        x2 = None if self._x2_sum is None else self._x2_sum / self.n_tokens
        return LayerStats(self.n_tokens, x2, self._act_max, self._hessian)


@contextmanager
def collect_stats(layers: Mapping[str, nn.Module], needs: Iterable[str]
                  ) -> Iterator[dict[str, StatsAccumulator]]:
    """Hook every module of ``layers`` (Linears, by name) so that each forward call adds its input
    to that layer's accumulator; the hooks are removed on exit."""
    accs: dict[str, StatsAccumulator] = {}
    handles = []
    try:
        for name, module in layers.items():
            weight = module.weight
            acc = StatsAccumulator(weight.shape[1], needs, device=weight.device)
            accs[name] = acc
            handles.append(module.register_forward_hook(
                lambda _m, args, _out, acc=acc: acc.add(args[0])))
        yield accs
    finally:
        for h in handles:
            h.remove()
