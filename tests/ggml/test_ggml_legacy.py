"""Legacy types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): bytes against gguf-py, and packing codes."""

from __future__ import annotations

import numpy as np
import pytest
from ggml_cases import LEGACY, same_bits
from gguf import GGMLQuantizationType, quants

from lowbit import ggml


def _has_negative_zero(x: np.ndarray) -> bool:
    return bool(np.signbit(x[x == 0]).any())


@pytest.mark.parametrize("qtype", LEGACY)
def test_bytes_equal_gguf_py(qtype: str, rows: dict[str, np.ndarray]) -> None:
    for name, row in rows.items():
        if _has_negative_zero(row):
            continue  # gguf-py differs from ggml's C on -0.0; see test_negative_zero_*
        x = row.reshape(4, -1)
        ref = quants.quantize(x, GGMLQuantizationType[qtype])
        assert np.array_equal(ggml.quantize(x, qtype), ref), (qtype, name)


def test_negative_zero_block_follows_c() -> None:
    # quantize_row_q4_0_ref starts from max = +0.0 and only replaces it on |v| > amax, so an
    # all-zero block gets d = +0.0 / -8 = -0.0 whatever the zeros' signs (gguf-py instead
    # takes the first element, -0.0, and writes d = +0.0).
    x = np.full(32, -0.0, np.float32)
    d = ggml.unpack_legacy(ggml.quantize(x, "Q4_0").reshape(1, -1), "Q4_0").d
    assert np.signbit(d).all()
    # Q4_1: C's strict `v < min` scan keeps the first zero as min, here +0.0
    x = np.zeros(32, np.float32)
    x[1::2] = -0.0
    m = ggml.unpack_legacy(ggml.quantize(x, "Q4_1").reshape(1, -1), "Q4_1").m
    assert not np.signbit(m).any()


@pytest.mark.parametrize("qtype", LEGACY)
def test_pack_unpack_round_trip(qtype: str, rows: dict[str, np.ndarray]) -> None:
    pack = getattr(ggml, f"pack_{qtype.lower()}")
    x = rows["gauss"].reshape(2, -1)
    data = ggml.quantize(x, qtype)
    d, m, q = ggml.unpack_legacy(data.reshape(-1, ggml.type_size(qtype)), qtype)
    d, q = d.reshape(2, -1), q.reshape(2, -1)
    args = (d, q) if m is None else (d, m.reshape(2, -1), q)
    assert np.array_equal(pack(*args), data)


@pytest.mark.parametrize("qtype", LEGACY)
def test_packed_codes_decode_by_the_documented_formula(qtype: str) -> None:
    rng = np.random.default_rng(7)
    lo, hi = ggml.legacy.CODE_RANGE[qtype]
    q = rng.integers(lo, hi + 1, size=(3, 128))
    d = rng.standard_normal((3, 4)).astype(np.float16)
    m = rng.standard_normal((3, 4)).astype(np.float16)
    pack = getattr(ggml, f"pack_{qtype.lower()}")
    data = pack(d, q) if qtype in ("Q8_0", "Q4_0", "Q5_0") else pack(d, m, q)
    # value = d * q (+ m), each operation rounded to float32
    expect = np.repeat(d.astype(np.float32), 32, axis=1) * q.astype(np.float32)
    if qtype in ("Q4_1", "Q5_1"):
        expect = expect + np.repeat(m.astype(np.float32), 32, axis=1)
    assert same_bits(ggml.dequantize(data, qtype), expect)
    assert same_bits(quants.dequantize(data, GGMLQuantizationType[qtype]), expect)


def test_pack_rejects_out_of_range_codes_and_wrong_scales() -> None:
    d = np.ones(1, np.float16)
    with pytest.raises(ValueError, match=r"Q4_0.*\[-8, 7\]"):
        ggml.pack_q4_0(d, np.full(32, 8))
    with pytest.raises(ValueError, match=r"Q4_1.*\[0, 15\]"):
        ggml.pack_q4_1(d, d, np.full(32, -1))
    with pytest.raises(TypeError, match="float16"):
        ggml.pack_q8_0(np.ones(1, np.float32), np.zeros(32, np.int8))
    with pytest.raises(ValueError, match="shape"):
        ggml.pack_q5_0(np.ones(2, np.float16), np.zeros(32, np.int8))
    with pytest.raises(ValueError, match="Q5_1.*40"):
        ggml.pack_q5_1(d, d, np.zeros(40, np.int8))
    with pytest.raises(TypeError, match="integer"):
        ggml.pack_q8_0(d, np.zeros(32, np.float32))


def test_q8_0_accepts_minus_128_which_its_quantizer_never_writes() -> None:
    d = np.array([0.5], np.float16)
    data = ggml.pack_q8_0(d, np.full(32, -128))
    assert (ggml.dequantize(data, "Q8_0") == -64.0).all()
