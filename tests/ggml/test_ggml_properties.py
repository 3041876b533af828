"""Property tests (hypothesis) for shapes, idempotence and agreement with llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import KQUANTS, LEGACY, QUANTIZED
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit import ggml

FINITE = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
#: bits of one element code of each quantized type (the grid the fitted scale spreads)
ELEMENT_BITS = {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q2_K": 2, "Q3_K": 3,
                "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(qtype=st.sampled_from(ggml.SUPPORTED_TYPES), lead=st.lists(st.integers(1, 3), max_size=2),
       nblocks=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_shapes(qtype: str, lead: list[int], nblocks: int, seed: int) -> None:
    n = nblocks * ggml.block_size(qtype)
    x = np.random.default_rng(seed).standard_normal((*lead, n)).astype(np.float32)
    q = ggml.quantize(x, qtype)
    assert q.shape == (*lead, nblocks * ggml.type_size(qtype))
    assert ggml.dequantize(q, qtype).shape == x.shape


@settings(max_examples=300, deadline=None)
@given(qtype=st.sampled_from(LEGACY), x=arrays(np.float32, (64,), elements=FINITE))
def test_legacy_requantize_is_idempotent(qtype: str, x: np.ndarray) -> None:
    # Holds when every block's fp16 scale d is a normal fp16 number: hypothesis finds
    # counterexamples when d underflows (the block decodes to zeros, which requantize to
    # different codes) and, for Q4_1/Q5_1, when the stored min m is -0.0 (decoded zeros
    # are +0.0, so the new m is +0.0).
    q1 = ggml.quantize(x, qtype)
    d, m, _ = ggml.unpack_legacy(q1.reshape(-1, ggml.type_size(qtype)), qtype)
    assume((np.abs(d.astype(np.float32)) >= 2.0**-14).all())
    assume(m is None or not (np.signbit(m) & (m == 0)).any())
    q2 = ggml.quantize(ggml.dequantize(q1, qtype), qtype)
    assert np.array_equal(q1, q2)


@SETTINGS
@given(qtype=st.sampled_from(QUANTIZED), x=arrays(np.float32, (256,), elements=FINITE))
def test_decoded_values_stay_within_input_range(qtype: str, x: np.ndarray) -> None:
    # Every type's grid spans at most the block's range plus rounding of its fp16 scales (10%
    # of max |x|: Q2_K's 4-bit scale codes can overshoot by 1/15 of the range). The K-quants
    # fit scale and min by least squares (llama.cpp's make_qkx2 search), which can move the
    # grid past the data by up to one grid step, (max - min) / (2**bits - 1): hypothesis found
    # a Q2_K block with range 16898 whose top level lands 1003 above its max.
    y = ggml.dequantize(ggml.quantize(x, qtype), qtype)
    amax = float(np.abs(x).max())
    step = float(x.max() - x.min()) / (2 ** ELEMENT_BITS[qtype] - 1)
    assert np.isfinite(y).all()
    assert np.abs(y).max() <= max(1.1 * amax, amax + step) + 1e-30


@pytest.mark.llamacpp
@SETTINGS
@given(qtype=st.sampled_from(QUANTIZED), x=arrays(np.float32, (512,), elements=FINITE))
def test_bytes_identical_to_llamacpp(qtype: str, x: np.ndarray, llamacpp_quantize) -> None:
    assert np.array_equal(ggml.quantize(x, qtype), llamacpp_quantize(x, qtype))


@pytest.mark.llamacpp
@SETTINGS
@given(qtype=st.sampled_from(KQUANTS), scale=st.floats(1e-30, 1e30), seed=st.integers(0, 2**32 - 1),
       zero_frac=st.floats(0, 1))
def test_kquant_scaled_gaussian_identical_to_llamacpp(qtype, scale, seed, zero_frac,
                                                      llamacpp_quantize) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(512) * scale * (rng.random(512) >= zero_frac)).astype(np.float32)
    assume(np.isfinite(x).all())
    assert np.array_equal(ggml.quantize(x, qtype), llamacpp_quantize(x, qtype))
