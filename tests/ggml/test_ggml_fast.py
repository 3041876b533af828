"""The fast path (ggml's C quantizer via ctypes) against lowbit's numpy reference, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import QUANTIZED
from test_ggml_importance import WEIGHTED, _importances

from lowbit import ggml
from lowbit.ggml import fast

needs_library = pytest.mark.skipif(fast.library_path() is None,
                                   reason="llama-cpp-python (libggml-base) is not installed")


def _blocks_differ(a: np.ndarray, b: np.ndarray, qtype: str) -> int:
    bs = ggml.type_size(qtype)
    return int((a.reshape(-1, bs) != b.reshape(-1, bs)).any(axis=1).sum())


@needs_library
@pytest.mark.parametrize("qtype", QUANTIZED)
def test_fast_equals_reference_on_special_rows(qtype, rows) -> None:
    x = np.stack(list(rows.values()))
    ref = ggml.quantize(x, qtype, impl="reference")
    got = ggml.quantize(x, qtype, impl="fast")
    assert got.shape == ref.shape and _blocks_differ(got, ref, qtype) == 0


@needs_library
@pytest.mark.parametrize("qtype", WEIGHTED)
def test_fast_equals_reference_with_importance(qtype, rows) -> None:
    x = np.stack([r[:1024] for r in rows.values()])
    for iname, qw in _importances(1024, np.random.default_rng(5)).items():
        ref = ggml.quantize(x, qtype, importance=qw, impl="reference")
        got = ggml.quantize(x, qtype, importance=qw, impl="fast")
        assert _blocks_differ(got, ref, qtype) == 0, (qtype, iname)


@needs_library
def test_fast_keeps_leading_shape_and_checks() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 256)).astype(np.float16)
    out = ggml.quantize(x, "Q4_K", impl="fast")
    assert out.shape == (2, 3, ggml.type_size("Q4_K"))
    assert np.array_equal(out, ggml.quantize(x, "Q4_K", impl="reference"))
    bad = np.full((1, 256), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        ggml.quantize(bad, "Q4_K", impl="fast")


def test_auto_follows_the_switch(monkeypatch) -> None:
    """LOWBIT_GGML_FAST=0 turns the fast path off; "auto" then gives the reference bytes."""
    monkeypatch.setenv(fast.ENV_SWITCH, "0")
    assert not fast.available("Q4_K")
    x = np.random.default_rng(3).standard_normal((4, 512)).astype(np.float32)
    assert np.array_equal(ggml.quantize(x, "Q3_K"), ggml.quantize(x, "Q3_K", impl="reference"))
    monkeypatch.setenv(fast.ENV_SWITCH, "1")
    assert fast.available("Q4_K") == (fast.library_path() is not None)
    assert not fast.available("F16")


def test_unknown_impl_is_refused() -> None:
    with pytest.raises(ValueError, match="impl must be one of"):
        ggml.quantize(np.zeros((1, 32), np.float32), "Q8_0", impl="turbo")
