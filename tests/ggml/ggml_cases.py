"""Test inputs and comparisons shared by the ggml codec tests."""

from __future__ import annotations

import numpy as np

LEGACY = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
QUANTIZED = LEGACY + KQUANTS


def special_rows(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rows of length n (a multiple of 256) covering the cases the brief names."""
    g = rng.standard_normal(n).astype(np.float32)
    outlier = g.copy()
    outlier[n // 3] = 1e4
    negmax = np.abs(g)
    negmax[5::32] = -40.0  # every block's largest magnitude is negative
    ties = (rng.integers(-64, 64, n) + 0.5).astype(np.float32) / 8  # k + 0.5 grid
    ties[::32] = 8.0  # block max 8: legacy scales become exact and codes hit .5 ties
    sparse = (g * (rng.random(n) < 0.05)).astype(np.float32)  # many +0.0 and -0.0
    return {
        "gauss": g,
        "student_t2": rng.standard_t(2, n).astype(np.float32),
        "uniform": rng.uniform(-1, 1, n).astype(np.float32),
        "positive": rng.uniform(0.5, 2, n).astype(np.float32),
        "zeros": np.zeros(n, np.float32),
        "neg_zeros": np.full(n, -0.0, np.float32),
        "constant": np.full(n, 0.37, np.float32),
        "neg_constant": np.full(n, -3.0, np.float32),
        "outlier": outlier,
        "negative_max": negmax.astype(np.float32),
        "ties": ties,
        "ints": rng.integers(-8, 8, n).astype(np.float32),
        "sparse": sparse,
        "tiny": (g * 1e-6).astype(np.float32),
        "large": (g * 1e3).astype(np.float32),
    }


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of two float32 arrays (distinguishes -0.0, matches NaN payloads)."""
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
