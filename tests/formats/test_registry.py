"""The format registry: lookup, errors, every code of every format, and the properties
(max, min, smallest_positive, levels) against ml_dtypes.finfo / torch.finfo."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from lowbit.formats import IntFormat, format_names, get_format, register

# the names the formats package documents (formats/__init__.py)
EXPECTED = (
    [f"int{b}" for b in range(2, 9)] + [f"uint{b}" for b in range(2, 9)]
    + ["fp8-e4m3", "fp8-e5m2", "fp6-e2m3", "fp6-e3m2", "fp4-e2m1", "e8m0", "nf4", "bnb-fp4",
       "fp16", "bf16", "fp32"]
)
ML = {
    "fp8-e4m3": ml_dtypes.float8_e4m3fn, "fp8-e5m2": ml_dtypes.float8_e5m2,
    "fp6-e2m3": ml_dtypes.float6_e2m3fn, "fp6-e3m2": ml_dtypes.float6_e3m2fn,
    "fp4-e2m1": ml_dtypes.float4_e2m1fn, "e8m0": ml_dtypes.float8_e8m0fnu,
}
TORCH = {"fp8-e4m3": torch.float8_e4m3fn, "fp8-e5m2": torch.float8_e5m2}
if hasattr(torch, "float8_e8m0fnu"):
    TORCH["e8m0"] = torch.float8_e8m0fnu
ENUMERABLE = [n for n in EXPECTED if n != "fp32"]  # fp32: 2^32 codes, sampled in test_ieee


def test_names():
    assert format_names() == EXPECTED


def test_unknown_name_lists_every_valid_name():
    with pytest.raises(ValueError, match="unknown format 'fp3'") as err:
        get_format("fp3")
    for name in EXPECTED:
        assert name in str(err.value)


def test_lookup():
    fmt = get_format("nf4")
    assert fmt.name == "nf4" and get_format(fmt) is fmt
    with pytest.raises(ValueError, match="already registered"):
        register(IntFormat("int4", 4))


def test_kinds_and_storage():
    kinds = {name: get_format(name).kind for name in EXPECTED}
    assert {n for n, k in kinds.items() if k == "int"} == {n for n in EXPECTED if "int" in n}
    assert {n for n, k in kinds.items() if k == "codebook"} == {"nf4", "bnb-fp4"}
    for name in EXPECTED:
        fmt = get_format(name)
        expected_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16,
                          "fp32": torch.float32}.get(name, torch.uint8)
        assert fmt.storage_dtype == expected_dtype
        if name != "fp32":
            assert fmt.all_codes().dtype == expected_dtype


@pytest.mark.parametrize("name", ENUMERABLE)
def test_every_code_decodes_encodes_decodes(name):
    """decode(encode(decode(c))) == decode(c) for every code c: bit-identical values (so -0
    stays -0) except where a codebook holds both -0 and +0 (bnb-fp4), and NaN stays NaN."""
    fmt = get_format(name)
    codes = fmt.all_codes()
    assert codes.numel() == 2**fmt.bits
    values = fmt.decode(codes)
    assert values.dtype == torch.float32
    nan = torch.isnan(values)
    if nan.any():
        assert torch.isnan(fmt.decode(fmt.encode(values[nan]))).all()
    for saturate in (True, False):
        keep = ~nan & (torch.isfinite(values) if saturate else True)
        again = fmt.decode(fmt.encode(values[keep], saturate=saturate))
        if fmt.kind == "codebook":
            assert torch.equal(again, values[keep])  # -0 == +0
        else:
            assert torch.equal(again.view(torch.int32), values[keep].view(torch.int32))


@pytest.mark.parametrize("name", list(ML))
def test_properties_match_ml_dtypes_finfo(name):
    fmt, info = get_format(name), ml_dtypes.finfo(ML[name])
    assert fmt.max == float(info.max)
    assert fmt.min == (float(info.min) if name != "e8m0" else float(info.smallest_normal))
    assert fmt.smallest_positive == float(info.smallest_subnormal)
    every = np.arange(2**fmt.bits, dtype=np.uint8).view(ML[name]).astype(np.float64)
    distinct = np.unique(every[np.isfinite(every)] + 0.0)  # + 0.0: -0 and +0 once
    assert fmt.levels == distinct.size
    assert np.array_equal(fmt.finite_values.numpy(), distinct)


@pytest.mark.parametrize("name", list(TORCH))
def test_properties_match_torch_finfo(name):
    fmt, info = get_format(name), torch.finfo(TORCH[name])
    assert fmt.max == info.max
    assert fmt.min == (info.min if name != "e8m0" else info.tiny)
    # torch.finfo has no smallest subnormal; the subnormal step is tiny * 2^-mantissa bits
    # (eps is 2^-mantissa bits for the fp8 formats; E8M0 has no subnormals)
    expected = info.tiny * info.eps if name != "e8m0" else info.tiny
    assert fmt.smallest_positive == expected


@pytest.mark.parametrize("name", ["nf4", "bnb-fp4"])
def test_codebook_properties(name):
    fmt = get_format(name)
    values = np.unique(fmt.table.double().numpy() + 0.0)
    assert (fmt.min, fmt.max) == (-1.0, 1.0) == (values[0], values[-1])
    assert fmt.smallest_positive == values[values > 0][0]
    assert fmt.levels == values.size
