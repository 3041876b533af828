"""Test helpers for data-aware methods: a recording method, hand-computed statistics."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lowbit.methods import register_method, unregister_method
from lowbit.methods.rtn import quantize_rtn

ALL_STATS = frozenset({"x2_mean", "act_max", "hessian"})


class Recorder:
    """A data-aware method that keeps the statistics it is given and rounds to nearest, so its
    codes equal RTN's and a float/RTN reference model can be rebuilt exactly."""

    def __init__(self) -> None:
        self.stats: dict = {}
        self.order: list[str] = []

    def __call__(self, w, scheme, stats, *, name):
        self.stats[name] = stats
        self.order.append(name)
        return quantize_rtn(w, scheme, name=name)


@contextmanager
def registered(name: str, fn, needs: Iterable[str] = ALL_STATS) -> Iterator[None]:
    """Register ``fn`` as method ``name`` for the duration of the block."""
    register_method(name, fn, needs=needs)
    try:
        yield
    finally:
        unregister_method(name)


def capture_linear_inputs(model: nn.Module, names: Iterable[str], batches: list[torch.Tensor]
                          ) -> dict[str, list[torch.Tensor]]:
    """The inputs each named Linear sees in ordinary full forward passes over ``batches``."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, args, _o, n=n: seen[n].append(args[0].detach().clone())) for n in seen]
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def hand_stats(inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """x2_mean, act_max and hessian = X^T X / N computed directly in float64."""
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs]).double()
    return {"x2_mean": x.square().mean(0), "act_max": x.abs().amax(0),
            "hessian": x.T @ x / x.shape[0], "abs_gram": x.abs().T @ x.abs() / x.shape[0],
            "n": torch.tensor(x.shape[0])}


def hessian_tolerance(ref: dict[str, torch.Tensor], updates: int) -> torch.Tensor:
    """Elementwise bound on the float32 running-average Hessian's error: a length-m float32 dot
    product errs by at most gamma_m = m u / (1 - m u) times the sum of |terms| (Higham, Accuracy
    and Stability, 3.1), u = 2^-24; each running-average update adds about 3 more roundings
    (scale, add, divide). With N tokens in all: (N + 3 * updates) u x mean(|x_i| |x_j|)."""
    u = 2.0**-24
    return (int(ref["n"]) + 3 * updates) * u * ref["abs_gram"]


def assert_stats_match(stats, ref: dict[str, torch.Tensor], updates: int) -> None:
    """Compare collected LayerStats with :func:`hand_stats`: act_max exactly (a max of float32
    values is one of them), x2_mean within float64 summation error (N u64 relative, u64 = 2^-53;
    the values are sums of squares, so the relative bound holds), hessian within
    :func:`hessian_tolerance`."""
    assert stats.n_tokens == int(ref["n"])
    assert torch.equal(stats.act_max.double(), ref["act_max"])
    n = int(ref["n"])
    assert torch.allclose(stats.x2_mean, ref["x2_mean"], rtol=2 * n * 2.0**-53, atol=0)
    err = (stats.hessian.double() - ref["hessian"]).abs()
    assert bool((err <= hessian_tolerance(ref, updates)).all()), float(err.max())
