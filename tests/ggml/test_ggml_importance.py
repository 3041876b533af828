"""Importance-weighted quantizers against llama.cpp's own `ggml_quantize_chunk` with an imatrix."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit import ggml
from lowbit.ggml.kquants import WEIGHTED_QUANTIZERS

WEIGHTED = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", *WEIGHTED_QUANTIZERS)


def _importances(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Importance vectors shaped like llama.cpp's imatrix (mean x^2 per column) and edge cases."""
    heavy = rng.standard_t(2, n).astype(np.float32) ** 2
    # zero importance for half the columns (and whole sub-blocks: columns no token used).
    # Not a lone nonzero weight in a sub-block: there llama.cpp's least-squares denominator
    # is pure rounding noise, which depends on how the C compiler fused multiply-adds.
    sparse = heavy * (rng.random(n) < 0.5)
    sparse[64:128] = 0.0
    return {"heavy": heavy, "uniform": np.ones(n, np.float32), "sparse": sparse,
            "tiny": (rng.random(n) * 1e-20).astype(np.float32)}


@pytest.mark.llamacpp
@pytest.mark.parametrize("qtype", WEIGHTED)
def test_weighted_bytes_identical_to_llamacpp(qtype, rows, llamacpp_quantize_chunk) -> None:
    rng = np.random.default_rng(99)
    for iname, qw in _importances(1024, rng).items():
        for name, row in rows.items():
            x = row.reshape(2, 1024)
            ours = ggml.quantize(x, qtype, importance=qw)
            ref = llamacpp_quantize_chunk(x, qtype, qw)
            bs = ggml.type_size(qtype)
            same = (ours.reshape(-1, bs) == ref.reshape(-1, bs)).all(axis=1)
            assert same.all(), f"{qtype} {name}/{iname}: {int((~same).sum())} blocks differ"


@pytest.mark.llamacpp
@pytest.mark.parametrize("qtype", WEIGHTED)
def test_weighted_many_rows_identical_to_llamacpp(qtype, llamacpp_quantize_chunk) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 512)) * rng.lognormal(0, 1, (64, 1))).astype(np.float32)
    x[3] = 0.0
    x[5, 100] = 300.0
    qw = (rng.lognormal(0, 2, 512) ** 2).astype(np.float32)
    assert np.array_equal(ggml.quantize(x, qtype, importance=qw),
                          llamacpp_quantize_chunk(x, qtype, qw))


def test_importance_changes_the_choice_but_q8_0_ignores_it() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    qw = (rng.random(256) ** 4).astype(np.float32)
    for qtype in WEIGHTED:
        same = np.array_equal(ggml.quantize(x, qtype, importance=qw), ggml.quantize(x, qtype))
        assert same == (qtype == "Q8_0"), qtype


def test_importance_is_validated() -> None:
    x = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError, match=r"importance has shape \(128,\), expected \(256,\)"):
        ggml.quantize(x, "Q4_0", importance=np.ones(128))
    with pytest.raises(ValueError, match="importance contains NaN"):
        ggml.quantize(x, "Q4_0", importance=np.full(256, np.nan))
