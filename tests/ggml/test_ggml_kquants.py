"""K-quants: error of quantize -> dequantize on Gaussian data, and degenerate super-blocks."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import KQUANTS

from lowbit import ggml

# Relative RMS error sqrt(mean((y - x)^2) / mean(x^2)) of llama.cpp's own reference
# quantizers (quantize_row_*_ref in the xllamacpp 2026.10.11549 wheel, called via ctypes)
# on standard Gaussian float32 arrays of shape (16, 4096), seeds 1000..1039:
# (mean, sample std) per type. The band below is mean +- 6 std.
LLAMACPP_GAUSSIAN_REL_RMSE = {
    "Q6_K": (0.01773, 0.000060),
    "Q5_K": (0.03610, 0.000116),
    "Q4_K": (0.07135, 0.000229),
    "Q3_K": (0.15084, 0.000585),
    "Q2_K": (0.29642, 0.001052),
}


def _rel_rmse(x: np.ndarray, qtype: str) -> float:
    y = ggml.dequantize(ggml.quantize(x, qtype), qtype)
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(2024).standard_normal((16, 4096)).astype(np.float32)


@pytest.mark.parametrize("qtype", KQUANTS)
def test_error_in_llamacpp_band(qtype: str, gaussian: np.ndarray) -> None:
    mean, std = LLAMACPP_GAUSSIAN_REL_RMSE[qtype]
    err = _rel_rmse(gaussian, qtype)
    assert mean - 6 * std < err < mean + 6 * std, (qtype, err)


def test_error_is_monotone_in_bits(gaussian: np.ndarray) -> None:
    errs = [_rel_rmse(gaussian, q) for q in ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")]
    assert errs == sorted(errs) and len(set(errs)) == len(errs), errs


@pytest.mark.parametrize("qtype", KQUANTS)
def test_zero_and_constant_superblocks(qtype: str) -> None:
    x = np.zeros((3, 256), np.float32)
    x[1] = 0.37
    x[2] = -2.5
    y = ggml.dequantize(ggml.quantize(x, qtype), qtype)
    assert (y[0] == 0).all()
    # a constant is one level of every type's grid up to the fp16 scale: within 1%
    # (fp16 has 11 significant bits; the 6-bit/8-bit scale codes add the rest)
    np.testing.assert_allclose(y[1:], x[1:], rtol=1e-2)


@pytest.mark.parametrize("qtype", KQUANTS)
def test_single_outlier_is_kept(qtype: str) -> None:
    x = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)
    x[0, 100] = 500.0
    y = ggml.dequantize(ggml.quantize(x, qtype), qtype)
    # the outlier's sub-block has the largest scale, which gets the top scale code, and the
    # outlier the extreme code: what is left is the rounding of the fp16 super-block scale,
    # half an fp16 ulp = 2^-11 relative; allow one ulp (2^-10)
    assert abs(y[0, 100] - 500.0) / 500.0 < 2.0**-10
