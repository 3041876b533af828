"""Every type: our decoder equals gguf-py's bit for bit, on our bytes and on arbitrary bytes."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import same_bits
from gguf import GGMLQuantizationType, quants

from lowbit import ggml
from lowbit.ggml.layout import LAYOUTS


@pytest.mark.parametrize("qtype", ggml.SUPPORTED_TYPES)
def test_decoder_matches_gguf_on_our_bytes(qtype: str, rows: dict[str, np.ndarray]) -> None:
    for name, row in rows.items():
        data = ggml.quantize(row.reshape(2, -1), qtype)
        ref = quants.dequantize(data, GGMLQuantizationType[qtype])
        assert same_bits(ggml.dequantize(data, qtype), ref), (qtype, name)


def _random_blocks(qtype: str, nb: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random block bytes, with fp16 fields redrawn as finite values so that both
    decoders see the same numbers (NaN payload propagation is not part of the format)."""
    layout = LAYOUTS[qtype]
    data = rng.integers(0, 256, size=(nb, layout.type_size), dtype=np.uint8)
    for f in layout.fields:
        if f.dtype == "<f2":
            vals = (rng.standard_normal((nb, f.count)) * 10.0 ** rng.integers(-6, 4, (nb, 1)))
            data[:, f.offset:f.offset + f.nbytes] = vals.astype(np.float16).view(np.uint8)
    return data


@pytest.mark.parametrize("qtype", [t for t in ggml.SUPPORTED_TYPES if t not in ("F32", "BF16")])
def test_decoder_matches_gguf_on_arbitrary_bytes(qtype: str) -> None:
    data = _random_blocks(qtype, 512, np.random.default_rng(99)).reshape(4, -1)
    ref = quants.dequantize(data, GGMLQuantizationType[qtype])
    assert same_bits(ggml.dequantize(data, qtype), ref)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_float_types_against_gguf(qtype: str) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(4096) * 10.0 ** rng.integers(-40, 38, 4096)).astype(np.float32)
    x[:4] = [np.inf, -np.inf, np.nan, -0.0]
    ours = ggml.quantize(x, qtype)
    with np.errstate(over="ignore"):  # F16: values beyond 65504 become inf in both
        ref = quants.quantize(x, GGMLQuantizationType[qtype])
    assert np.array_equal(ours, np.ascontiguousarray(ref).view(np.uint8))
    back = quants.dequantize(ours, GGMLQuantizationType[qtype])
    assert same_bits(ggml.dequantize(ours, qtype), back)
