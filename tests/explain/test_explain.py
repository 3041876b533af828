"""lowbit.explain as data: the block errors, the grids, the comparison, the format views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.core.scheme import Scheme
from lowbit.explainer import explain
from lowbit.explainer.formatview import format_view


def _weight() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(8, 160) * 0.02


@pytest.mark.parametrize("scheme", ["int4-sym-g32", "int4-asym-g64", "int4-asym-g64-zpint",
                                    "nf4-g32", "mxfp4", "int8-sym-channel"])
def test_every_dequantized_weight_of_a_block_is_on_its_grid(scheme):
    w = _weight()
    exp = explain(None, "w", [scheme], data=w)
    view = exp.schemes[0]
    deq = view.qtensor.dequantize().double().numpy()
    for block in (view.typical, view.worst):
        lo, hi = block.cols
        values = deq[block.row, lo:hi]
        gaps = np.abs(values[:, None] - block.grid[None, :]).min(axis=1)
        assert gaps.max() <= 1e-6 * max(1.0, np.abs(block.grid).max())
        np.testing.assert_array_equal(block.weights, w[block.row, lo:hi].double().numpy())


def test_block_errors_and_comparison():
    w = _weight()
    w[3, 100] = 1.0
    exp = explain(None, "w", ["int4-sym-g32", "int4-asym-g128"], data=w)
    a, b = exp.schemes
    assert a.block_error.shape == (8, 5) and b.block_error.shape == (8, 2)
    assert a.worst.rel_error == a.block_error.max()
    assert a.block_error[a.worst.row, a.worst.block] == a.block_error.max()
    e = a.error[3, 96:128].astype(np.float64)
    ref = w[3, 96:128].double().numpy()
    assert a.block_error[3, 3] == pytest.approx(np.linalg.norm(e) / np.linalg.norm(ref))
    assert exp.outliers == 1
    (comp,) = exp.comparisons  # one element format (int4), sym and asym, every block size
    assert "int4-sym-g32" in comp.schemes and "int4-asym-channel" in comp.schemes
    assert comp.rel_error[comp.schemes.index("int4-sym-g32")] == pytest.approx(a.rel_error)


def test_format_views():
    int4 = format_view(Scheme.parse("int4-sym-g32"))
    assert int4.values.tolist() == list(range(-8, 8)) and set(int4.spacing) == {1.0}
    fp4 = format_view(Scheme.parse("mxfp4"))
    assert fp4.fields == (("sign", 1), ("exponent", 2), ("mantissa", 1))
    assert fp4.values.max() == 6.0 and fp4.spacing.max() == 2.0 and fp4.spacing.min() == 0.5
    assert len(format_view(Scheme.parse("nf4-g64")).values) == 16


def test_ggml_scheme_is_refused_clearly():
    with pytest.raises(ValueError, match="ggml type q4_k"):
        explain(None, "w", ["q4_k"], data=torch.randn(4, 256))


def test_top_level_explain_stays_a_function():
    """Importing the package must not replace ``lowbit.explain`` by a module."""
    import lowbit

    w = _weight()
    first = lowbit.explain(None, "w", "int4-sym-g32", data=w)
    second = lowbit.explain(None, "w", "int4-sym-g32", data=w)
    assert callable(lowbit.explain) and isinstance(second, lowbit.Explanation)
    assert first.schemes[0].rel_error == second.schemes[0].rel_error
