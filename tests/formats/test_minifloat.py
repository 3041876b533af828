"""MiniFloat (fp8/fp6/fp4) and E8M0 against ml_dtypes and torch casts, bit for bit.

ml_dtypes is the reference for every value the formats represent and for the non-saturating
cast; where it differs from what lowbit documents (NaN into fp6/fp4, float32 subnormals into
E8M0) the test checks lowbit's documented behaviour explicitly and says why.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.formats import (
    E8M0_SCALE,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    MiniFloat,
)

# (lowbit format, ml_dtypes dtype)
ML_REFS = [
    (FP8_E4M3, ml_dtypes.float8_e4m3fn),
    (FP8_E5M2, ml_dtypes.float8_e5m2),
    (FP6_E2M3, ml_dtypes.float6_e2m3fn),
    (FP6_E3M2, ml_dtypes.float6_e3m2fn),
    (FP4_E2M1, ml_dtypes.float4_e2m1fn),
    (E8M0_SCALE, ml_dtypes.float8_e8m0fnu),
]
SIGNED_REFS = [r for r in ML_REFS if r[0] is not E8M0_SCALE]
NO_NAN = (FP6_E2M3, FP6_E3M2, FP4_E2M1)
ids = [f.name for f, _ in ML_REFS]
signed_ids = [f.name for f, _ in SIGNED_REFS]


def ml_codes(x: np.ndarray, dtype) -> np.ndarray:
    """ml_dtypes' codes of float32 ``x`` (a plain, non-saturating cast)."""
    return np.asarray(x, dtype=np.float32).astype(dtype).view(np.uint8)


def ml_values(dtype, bits: int) -> np.ndarray:
    """float64 value of every code 0 .. 2**bits - 1 according to ml_dtypes."""
    return np.arange(2**bits, dtype=np.uint8).view(dtype).astype(np.float64)


def lb_codes(fmt, x: np.ndarray, saturate: bool) -> np.ndarray:
    return fmt.encode(torch.from_numpy(np.asarray(x, dtype=np.float32)), saturate=saturate).numpy()


def f32(values) -> np.ndarray:
    with np.errstate(over="ignore"):  # values past float32 max become Inf, which is wanted
        return np.asarray(values, dtype=np.float32)


def up(x):
    with np.errstate(over="ignore"):  # float32 max steps up to Inf, which is wanted
        return np.nextafter(f32(x), np.float32(np.inf))


def down(x):
    with np.errstate(over="ignore"):
        return np.nextafter(f32(x), np.float32(-np.inf))


def edge_values(dtype, bits: int) -> np.ndarray:
    """Every representable value, every midpoint between neighbours (all binades, subnormal
    ones included) and the float32 values either side of each, max, one float32 ulp above max,
    the midpoint between max and the next value the grid would have, zeros, huge values and
    infinities; both signs. Derived from ml_dtypes' values, not from lowbit's table."""
    vals = ml_values(dtype, bits)
    pos = np.unique(np.abs(vals[np.isfinite(vals)]))
    top, prev = pos[-1], pos[-2]
    # the next value past max on the unbounded grid: one top-binade step further, or one
    # binade up for E8M0 (no mantissa bits: neighbours differ by a factor of 2)
    past = top * 2 if dtype == ml_dtypes.float8_e8m0fnu else top + (top - prev)
    mids = (pos[:-1] + pos[1:]) / 2
    assert np.all(f32(mids).astype(np.float64) == mids)  # midpoints are float32-exact
    tie_past = (top + past) / 2
    special = [0.0, top, tie_past, past, 2 * past, 1e30, np.finfo(np.float32).max, np.inf,
               np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal]
    pts = f32(np.concatenate([pos, mids, special]))
    pts = np.concatenate([pts, up(pts), down(pts)])
    return np.concatenate([pts, -pts])


def random_values(fmt, n: int = 10_000, seed: int = 0) -> np.ndarray:
    """Random float32: arbitrary bit patterns, log-uniform magnitudes around the format's range
    and uniform values over [-1.2 max, 1.2 max]; no NaN."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    lo, hi = np.log2(fmt.smallest_positive) - 4, np.log2(fmt.max) + 3
    mag = np.exp2(rng.uniform(lo, hi, n)) * rng.choice([-1.0, 1.0], n)
    uni = rng.uniform(-1.2 * fmt.max, 1.2 * fmt.max, n)
    x = np.concatenate([raw, f32(mag), f32(uni)])
    return x[~np.isnan(x)]


# --- decode ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "dtype"), ML_REFS, ids=ids)
def test_decode_every_code_matches_ml_dtypes(fmt, dtype):
    ref = ml_values(dtype, fmt.bits).astype(np.float32)
    got = fmt.decode(fmt.all_codes()).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    # bit-identical, so -0 is -0
    assert np.array_equal(got[ok].view(np.uint32), ref[ok].view(np.uint32))


@pytest.mark.parametrize(("fmt", "dtype"), ML_REFS, ids=ids)
def test_encode_decode_every_code_is_identity(fmt, dtype):
    codes = fmt.all_codes()
    values = fmt.decode(codes)
    nan = torch.isnan(values)
    again = fmt.encode(values[~nan], saturate=False)
    assert torch.equal(again, codes[~nan])
    finite = torch.isfinite(values)
    assert torch.equal(fmt.encode(values[finite]), codes[finite])  # saturate=True: same
    assert torch.isnan(fmt.decode(fmt.encode(values[nan]))).all()


# --- encode, non-saturating: a plain cast ----------------------------------------------------
@pytest.mark.parametrize(("fmt", "dtype"), ML_REFS, ids=ids)
def test_encode_edges_match_ml_dtypes(fmt, dtype):
    x = edge_values(dtype, fmt.bits)
    if fmt is E8M0_SCALE:
        x = x[np.abs(x) >= np.finfo(np.float32).tiny]  # float32 subnormals: see the E8M0 test
    got = lb_codes(fmt, x, saturate=False)
    ref = ml_codes(x, dtype)
    bad = got != ref
    assert not bad.any(), (x[bad][:8], got[bad][:8], ref[bad][:8])


@pytest.mark.parametrize(("fmt", "dtype"), ML_REFS, ids=ids)
def test_encode_random_matches_ml_dtypes(fmt, dtype):
    x = random_values(fmt)
    if fmt is E8M0_SCALE:
        x = x[np.abs(x) >= np.finfo(np.float32).tiny]
    got = lb_codes(fmt, x, saturate=False)
    ref = ml_codes(x, dtype)
    bad = got != ref
    assert not bad.any(), (x[bad][:8], got[bad][:8], ref[bad][:8])


@pytest.mark.parametrize(("fmt", "dtype"), SIGNED_REFS, ids=signed_ids)
def test_exact_ties_round_to_even_code(fmt, dtype):
    """Every midpoint between neighbouring magnitudes (subnormal binades included) goes to the
    neighbour whose code is even, as ml_dtypes does (checked above); here stated directly."""
    vals = ml_values(dtype, fmt.bits)[: 2 ** (fmt.bits - 1)]
    finite = np.isfinite(vals)
    codes = np.arange(vals.size)[finite]
    mags = vals[finite]
    mids = f32((mags[:-1] + mags[1:]) / 2)
    want = np.where(codes[:-1] % 2 == 0, codes[:-1], codes[1:])
    assert np.array_equal(lb_codes(fmt, mids, saturate=True), want)
    assert np.array_equal(lb_codes(fmt, -mids, saturate=True), want | 2 ** (fmt.bits - 1))


@pytest.mark.parametrize(("fmt", "dtype"), SIGNED_REFS, ids=signed_ids)
def test_nan_and_inf_non_saturating(fmt, dtype):
    x = f32([np.nan, -np.nan, np.inf, -np.inf])
    if fmt in NO_NAN:
        # lowbit documents a ValueError for NaN where the format has none; ml_dtypes silently
        # turns NaN into -0 / +0 (code 0x20 / 0x00 for fp6), which lowbit deliberately avoids
        with pytest.raises(ValueError, match="NaN"):
            fmt.encode(torch.from_numpy(x[:1]), saturate=False)
        with pytest.raises(ValueError, match="NaN"):
            fmt.encode(torch.from_numpy(x[:2]))
        # infinities: no Inf and no NaN code, so a plain cast gives +-max (ml_dtypes agrees)
        assert np.array_equal(lb_codes(fmt, x[2:], False), ml_codes(x[2:], dtype))
        return
    # NaN keeps its sign and uses ml_dtypes' NaN code (E5M2: the quiet NaN 0x7E)
    assert np.array_equal(lb_codes(fmt, x, False), ml_codes(x, dtype))


# --- encode, saturating (the default) --------------------------------------------------------
@pytest.mark.parametrize(("fmt", "dtype"), ML_REFS, ids=ids)
def test_saturate_is_clamp_then_cast(fmt, dtype):
    x = np.concatenate([edge_values(dtype, fmt.bits), random_values(fmt, seed=1)])
    if fmt is E8M0_SCALE:
        x = x[np.abs(x) >= np.finfo(np.float32).tiny]
    ref = ml_codes(np.clip(x, -fmt.max, fmt.max), dtype)
    got = lb_codes(fmt, x, saturate=True)
    bad = got != ref
    assert not bad.any(), (x[bad][:8], got[bad][:8], ref[bad][:8])


@pytest.mark.parametrize(("fmt", "dtype"), SIGNED_REFS, ids=signed_ids)
def test_saturate_overflow_and_inf_give_max(fmt, dtype):
    big = f32([np.inf, 1e30, fmt.max * 1.0625, np.nextafter(np.float32(fmt.max), np.inf)])
    values = fmt.decode(fmt.encode(torch.from_numpy(np.concatenate([big, -big]))))
    expected = torch.tensor([fmt.max] * 4 + [-fmt.max] * 4)
    assert torch.equal(values, expected)
    if fmt.has_nan:
        nan_codes = lb_codes(fmt, f32([np.nan, -np.nan]), saturate=True)
        assert np.array_equal(nan_codes, ml_codes(f32([np.nan, -np.nan]), dtype))


# --- E8M0 specifics --------------------------------------------------------------------------
def test_e8m0_zero_negative_nan_give_nan_code():
    x = f32([0.0, -0.0, -1.0, -np.inf, np.nan, -1e-30])
    for saturate in (True, False):
        got = lb_codes(E8M0_SCALE, x, saturate)
        # the documented NaN code (255); ml_dtypes agrees, torch does not (see test_torch_e8m0)
        assert np.array_equal(got, ml_codes(x, ml_dtypes.float8_e8m0fnu))
        assert np.all(got == 255)


def test_e8m0_overflow():
    big = f32([np.inf, np.finfo(np.float32).max, 1.5 * 2.0**127])
    assert np.all(lb_codes(E8M0_SCALE, big, saturate=True) == 254)
    assert np.all(lb_codes(E8M0_SCALE, big, saturate=False) == 255)
    # just under the tie between 2^127 and 2^128 still rounds to 2^127 in both modes
    below = down(f32([1.5 * 2.0**127]))
    assert lb_codes(E8M0_SCALE, below, saturate=False)[0] == 254


def test_e8m0_ties_round_up():
    """A tie 1.5 * 2^e rounds up to 2^(e+1) in every binade (documented; ml_dtypes agrees)."""
    e = np.arange(-127, 127)
    ties = f32(1.5 * np.exp2(e.astype(np.float64)))
    got = lb_codes(E8M0_SCALE, ties, saturate=False)
    assert np.array_equal(got, (e + 128).astype(np.uint8))
    assert np.array_equal(got, ml_codes(ties, ml_dtypes.float8_e8m0fnu))
    assert np.array_equal(lb_codes(E8M0_SCALE, down(ties), False), (e + 127).astype(np.uint8))


def test_e8m0_float32_subnormal_inputs_round_to_nearest():
    """Inputs below 2^-126 are float32 subnormals. lowbit rounds them to the nearest power of two
    as documented: code 0 (2^-127) below the tie 1.5 * 2^-127, code 1 from it up. ml_dtypes and
    torch round the subnormal's bit pattern instead and send (2^-127, 1.5 * 2^-127) to code 1,
    which is not the nearest value; lowbit deliberately differs there."""
    tiny = np.finfo(np.float32).tiny  # 2^-126
    x = f32([np.finfo(np.float32).smallest_subnormal, 2.0**-140, 2.0**-127, 1.2 * 2.0**-127,
             down(f32([1.5 * 2.0**-127]))[0]])
    assert np.all(lb_codes(E8M0_SCALE, x, True) == 0)
    y = f32([1.5 * 2.0**-127, up(f32([1.5 * 2.0**-127]))[0], down(f32([tiny]))[0]])
    assert np.all(lb_codes(E8M0_SCALE, y, True) == 1)
    # nearest, checked numerically: |x - 2^-127| <= |x - 2^-126| for the code-0 inputs
    xd = x.astype(np.float64)
    assert np.all(np.abs(xd - 2.0**-127) <= np.abs(xd - 2.0**-126))


# --- torch's float8 casts --------------------------------------------------------------------
TORCH_REFS = [(FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)]
if hasattr(torch, "float8_e8m0fnu"):
    TORCH_REFS.append((E8M0_SCALE, torch.float8_e8m0fnu))


def torch_codes(x: np.ndarray, dtype) -> np.ndarray:
    return torch.from_numpy(f32(x)).to(dtype).view(torch.uint8).numpy()


@pytest.mark.parametrize(("fmt", "tdtype"), TORCH_REFS, ids=[f.name for f, _ in TORCH_REFS])
def test_encode_matches_torch_cast(fmt, tdtype):
    mldt = {torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn, torch.float8_e5m2: ml_dtypes.float8_e5m2,
            getattr(torch, "float8_e8m0fnu", None): ml_dtypes.float8_e8m0fnu}[tdtype]
    x = np.concatenate([edge_values(mldt, 8), random_values(fmt, seed=2)])
    if fmt is E8M0_SCALE:
        # torch encodes 0 as code 0 and ignores the sign; lowbit (and ml_dtypes) give NaN there,
        # and float32 subnormals differ as explained above: compare positive normal inputs only
        x = x[x >= np.finfo(np.float32).tiny]
    ref = torch_codes(x, tdtype)
    got = lb_codes(fmt, x, saturate=False)
    # lowbit rounds "past max" to the overflow value; torch 2.13's float8_e4m3fn cast saturates
    # to +-448 instead (even for Inf), i.e. it equals lowbit's saturate=True there
    overflow = (np.abs(x) > fmt.max) & (got != lb_codes(fmt, x, saturate=True))
    if fmt is FP8_E4M3:
        sat = lb_codes(fmt, x, saturate=True)
        assert np.array_equal(ref[overflow], sat[overflow])
        got = np.where(overflow, sat, got)
    bad = got != ref
    assert not bad.any(), (x[bad][:8], got[bad][:8], ref[bad][:8])


def test_torch_nan_codes():
    for fmt, tdtype in TORCH_REFS:
        x = f32([np.nan]) if fmt is E8M0_SCALE else f32([np.nan, -np.nan])
        got = torch.from_numpy(lb_codes(fmt, x, saturate=False))
        ref = torch.from_numpy(torch_codes(x, tdtype))
        # both are NaN codes; E5M2 payloads differ (torch 0x7F, lowbit/ml_dtypes 0x7E), so
        # compare what the codes mean and, for signed formats, the sign bit
        assert torch.isnan(fmt.decode(got)).all() and torch.isnan(fmt.decode(ref)).all()
        if fmt is not E8M0_SCALE:
            assert torch.equal(got >> 7, ref >> 7)


# --- value properties (hypothesis) -----------------------------------------------------------
FLOATS = st.floats(width=32, allow_nan=False, allow_infinity=True)
SIGNED_FORMATS = [f for f, _ in SIGNED_REFS]


def _value(fmt, x: float, saturate: bool = True) -> float:
    codes = fmt.encode(torch.tensor([x], dtype=torch.float32), saturate=saturate)
    return float(fmt.decode(codes)[0])


@pytest.mark.parametrize("fmt", SIGNED_FORMATS, ids=signed_ids)
@settings(max_examples=100, deadline=None)
@given(a=FLOATS, b=FLOATS)
def test_encode_is_monotone(fmt, a, b):
    a, b = min(a, b), max(a, b)
    assert _value(fmt, a) <= _value(fmt, b)
    if not fmt.has_nan:  # no Inf/NaN to overflow into: the plain cast is monotone too
        assert _value(fmt, a, False) <= _value(fmt, b, False)


@settings(max_examples=100, deadline=None)
@given(a=st.floats(min_value=0, exclude_min=True, width=32), b=st.floats(min_value=0,
                                                                         exclude_min=True,
                                                                         width=32))
def test_e8m0_monotone(a, b):
    a, b = min(a, b), max(a, b)
    assert _value(E8M0_SCALE, a) <= _value(E8M0_SCALE, b)


@pytest.mark.parametrize("fmt", [*SIGNED_FORMATS, E8M0_SCALE], ids=[*signed_ids, "e8m0"])
@settings(max_examples=200, deadline=None)
@given(u=st.floats(0, 1))
def test_error_at_most_half_a_step(fmt, u):
    """For x in [min, max], |decode(encode(x)) - x| <= half the gap between the two
    representable values around x (the grid step there)."""
    grid = fmt.finite_values.numpy()
    x = float(np.float32(grid[0] + u * (grid[-1] - grid[0])))
    x = min(max(x, grid[0]), grid[-1])
    i = int(np.searchsorted(grid, x, side="right")) - 1
    lo, hi = grid[i], grid[min(i + 1, grid.size - 1)]
    err = abs(_value(fmt, x) - x)
    assert err <= (hi - lo) / 2
    assert err == min(abs(x - lo), abs(x - hi))  # and it is the nearest of the two


@pytest.mark.parametrize("fmt", SIGNED_FORMATS, ids=signed_ids)
@settings(max_examples=100, deadline=None)
@given(x=FLOATS)
def test_sign_symmetry(fmt, x):
    sign = 2 ** (fmt.bits - 1)
    pos = fmt.encode(torch.tensor([abs(x)], dtype=torch.float32))
    neg = fmt.encode(torch.tensor([-abs(x)], dtype=torch.float32))
    assert int(neg[0]) == int(pos[0]) | sign
    assert int(pos[0]) < sign


# --- construction and input checks -----------------------------------------------------------
def test_bad_construction():
    with pytest.raises(ValueError, match="sign \\+ exponent \\+ mantissa"):
        MiniFloat("bad", 8, exp_bits=4, man_bits=4, bias=7)
    with pytest.raises(ValueError, match="specials"):
        MiniFloat("bad", 8, exp_bits=4, man_bits=3, bias=7, specials="inf")


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        FP8_E4M3.encode(torch.tensor([1, 2]))


def test_shape_and_dtype_kept():
    x = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    codes = FP4_E2M1.encode(x)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert FP4_E2M1.decode(codes).dtype == torch.float32
    # float64 input is first converted to float32 (documented in Format.encode)
    assert torch.equal(codes, FP4_E2M1.encode(x.float()))
