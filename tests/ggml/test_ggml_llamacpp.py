"""Our bytes against llama.cpp's own reference quantizers (needs the xllamacpp wheel)."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import QUANTIZED

from lowbit import ggml

pytestmark = pytest.mark.llamacpp


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_bytes_identical_to_llamacpp(qtype, rows, llamacpp_quantize) -> None:
    for name, row in rows.items():
        x = row.reshape(2, -1)
        ours = ggml.quantize(x, qtype).reshape(-1, ggml.type_size(qtype))
        ref = llamacpp_quantize(x, qtype).reshape(-1, ggml.type_size(qtype))
        same = (ours == ref).all(axis=1)
        assert same.all(), f"{qtype} {name}: {int((~same).sum())}/{len(same)} blocks differ"


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_degenerate_scales_identical_to_llamacpp(qtype, llamacpp_quantize) -> None:
    # blocks whose scale's reciprocal overflows float32 (max |x| ~ 1e-39), or whose fp16
    # scale overflows (|x| ~ 1e7): C reaches its float->int conversion edge cases here
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[0] *= np.float32(1e-39)
    x[1] *= np.float32(1e7)
    x[2, ::3] = 0.0
    x[2] *= np.float32(1e-30)
    assert np.array_equal(ggml.quantize(x, qtype), llamacpp_quantize(x, qtype))
