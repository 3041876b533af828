"""Block geometry of every ggml type against gguf-py's table, and the public API's checks."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lowbit import ggml
from lowbit.ggml.layout import LAYOUTS


@pytest.mark.parametrize("qtype", ggml.SUPPORTED_TYPES)
def test_sizes_match_gguf(qtype: str) -> None:
    expected = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    assert (ggml.block_size(qtype), ggml.type_size(qtype)) == expected


@pytest.mark.parametrize("qtype", ggml.SUPPORTED_TYPES)
def test_fields_tile_the_block(qtype: str) -> None:
    layout = LAYOUTS[qtype]
    offset = 0
    for f in layout.fields:
        assert f.offset == offset, (qtype, f.name)
        offset += f.nbytes
    assert offset == layout.type_size


def test_supported_types_are_the_brief_list() -> None:
    assert set(ggml.SUPPORTED_TYPES) == {
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    }


def test_unknown_type_is_a_value_error_naming_it() -> None:
    x = np.zeros((2, 256), np.float32)
    for call in (lambda: ggml.quantize(x, "Q7_K"), lambda: ggml.block_size("Q7_K"),
                 lambda: ggml.dequantize(np.zeros(10, np.uint8), "IQ2_XXS")):
        with pytest.raises(ValueError, match="Q7_K|IQ2_XXS"):
            call()


@pytest.mark.parametrize("qtype,n", [("Q4_K", 4096 + 32), ("Q8_0", 48), ("Q6_K", 128)])
def test_bad_row_length_names_type_and_length(qtype: str, n: int) -> None:
    with pytest.raises(ValueError, match=rf"{qtype}.*{n}"):
        ggml.quantize(np.zeros((3, n), np.float32), qtype)
    bad = ggml.type_size(qtype) + 1
    with pytest.raises(ValueError, match=rf"{qtype}.*{bad}"):
        ggml.dequantize(np.zeros((3, bad), np.uint8), qtype)


def test_non_finite_input_is_rejected() -> None:
    x = np.zeros(256, np.float32)
    x[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ggml.quantize(x, "Q4_K")


def test_gguf_enum_members_are_accepted() -> None:
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    assert np.array_equal(ggml.quantize(x, GGMLQuantizationType.Q4_0), ggml.quantize(x, "Q4_0"))


@pytest.mark.parametrize("qtype", ggml.SUPPORTED_TYPES)
def test_output_shapes(qtype: str) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 512)).astype(np.float32)
    q = ggml.quantize(x, qtype)
    assert q.dtype == np.uint8
    assert q.shape == (2, 3, 512 // ggml.block_size(qtype) * ggml.type_size(qtype))
    y = ggml.dequantize(q, qtype)
    assert y.dtype == np.float32 and y.shape == x.shape
