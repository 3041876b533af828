"""IEEE formats (fp16, bf16, fp32): encode is torch's cast; saturate clamps overflow to max."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats import BF16, FP16, FP32

IEEE = [FP16, BF16, FP32]
ieee_ids = [f.name for f in IEEE]
SIXTEEN = [FP16, BF16]
# first bit pattern of +Inf (positive finite patterns are 0 .. this - 1), from IEEE 754 layouts
INF_PATTERN = {"fp16": 0x7C00, "bf16": 0x7F80, "fp32": 0x7F800000}


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns (as int) of a float tensor, so -0 and NaN payloads compare exactly."""
    int_dtype = {2: torch.int16, 4: torch.int32}[t.element_size()]
    return t.view(int_dtype)


def next_up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, float("inf")))


def next_down(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, -float("inf")))


def sample_values(fmt) -> torch.Tensor:
    """float32 edges of ``fmt`` (zeros, subnormals, max, the overflow midpoint and the float32s
    around them, Inf, NaN) and random values over many magnitudes, both signs."""
    info = torch.finfo(fmt.dtype)
    g = torch.Generator().manual_seed(0)
    mag = torch.exp2(torch.empty(20_000).uniform_(-160, 130, generator=g))
    raw = torch.randint(-(2**31), 2**31 - 1, (20_000,), generator=g, dtype=torch.int32)
    raw = raw.view(torch.float32)
    # max = (2 - eps) * 2^emax and the top binade's step is eps * 2^emax: the overflow
    # midpoint is max + step / 2 (float32 Inf for fp32 itself)
    step = info.max * info.eps / (2 - info.eps)
    edges = torch.tensor([0.0, info.tiny, info.tiny * info.eps, info.max, 1.0, 1e30, 3.4e38,
                          info.max + step / 2], dtype=torch.float64).float()
    edges = torch.cat([edges, next_up(edges), next_down(edges),
                       torch.tensor([float("inf"), float("nan")])])
    x = torch.cat([edges, mag, raw])
    return torch.cat([x, -x])


@pytest.mark.parametrize("fmt", IEEE, ids=ieee_ids)
def test_non_saturating_encode_is_the_torch_cast(fmt):
    x = sample_values(fmt)
    assert torch.equal(bits_of(fmt.encode(x, saturate=False)), bits_of(x.to(fmt.dtype)))


@pytest.mark.parametrize("fmt", IEEE, ids=ieee_ids)
def test_saturating_encode_is_clamp_then_cast(fmt):
    x = sample_values(fmt)
    fmax = torch.finfo(fmt.dtype).max
    got = fmt.encode(x)
    nan = torch.isnan(x)
    assert torch.isnan(got[nan]).all()
    ref = x[~nan].clamp(-fmax, fmax).to(fmt.dtype)
    assert torch.equal(bits_of(got[~nan]), bits_of(ref))
    assert torch.isfinite(got[~nan]).all()
    big = torch.tensor([float("inf"), -float("inf"), 2.0 * fmax])  # 2 * max is Inf for fp32
    assert fmt.decode(fmt.encode(big)).tolist() == [fmax, -fmax, fmax]


@pytest.mark.parametrize("fmt", IEEE, ids=ieee_ids)
def test_decode_is_the_value(fmt):
    x = sample_values(fmt)
    codes = fmt.encode(x, saturate=False)
    assert codes.dtype == fmt.dtype == fmt.storage_dtype
    assert torch.equal(bits_of(fmt.decode(codes)), bits_of(codes.float()))


@pytest.mark.parametrize("fmt", SIXTEEN, ids=["fp16", "bf16"])
def test_every_code_round_trips(fmt):
    codes = fmt.all_codes()
    assert codes.dtype == fmt.dtype and codes.numel() == 2**16
    # all_codes is every bit pattern in order 0 .. 2^16 - 1
    assert torch.equal(bits_of(codes).to(torch.int32) & 0xFFFF, torch.arange(2**16))
    values = fmt.decode(codes)
    nan = torch.isnan(values)
    assert torch.equal(bits_of(fmt.encode(values[~nan], saturate=False)), bits_of(codes[~nan]))
    assert torch.isnan(fmt.decode(fmt.encode(values[nan]))).all()


def test_fp32_sampled_codes_round_trip():
    # 2^32 codes are too many to enumerate (all_codes says so): random bit patterns plus
    # the special ones
    with pytest.raises(ValueError, match="too many"):
        FP32.all_codes()
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=g, dtype=torch.int32)
    special = torch.tensor([0, -(2**31), 1, 0x7F7FFFFF, 0x7F800000, -8388608, 0x00800000],
                           dtype=torch.int32)
    codes = torch.cat([raw, special]).view(torch.float32)
    values = FP32.decode(codes)
    nan = torch.isnan(values)
    assert torch.equal(bits_of(FP32.encode(values[~nan], saturate=False)), bits_of(codes[~nan]))


@pytest.mark.parametrize("fmt", IEEE, ids=ieee_ids)
def test_properties_match_finfo(fmt):
    info = torch.finfo(fmt.dtype)
    assert fmt.max == info.max and fmt.min == -info.max
    # smallest subnormal: the bit pattern 1
    one = torch.tensor([1], dtype={2: torch.int16, 4: torch.int32}[fmt.bits // 8])
    assert fmt.smallest_positive == float(one.view(fmt.dtype)[0])
    # distinct finite values: positive finite patterns 0 .. INF_PATTERN - 1, twice, with
    # -0 and +0 counted once
    assert fmt.levels == 2 * INF_PATTERN[fmt.name] - 1


@pytest.mark.parametrize("fmt", SIXTEEN, ids=["fp16", "bf16"])
def test_finite_values_enumerate_all_codes(fmt):
    values = fmt.finite_values
    assert values.numel() == fmt.levels
    assert values[0] == fmt.min and values[-1] == fmt.max
    assert values[values > 0][0] == fmt.smallest_positive
