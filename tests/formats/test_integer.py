"""Integer formats: two's-complement codes, ranges, round-half-even, clamping, NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.formats import IntFormat, get_format

INTS = [get_format(f"{p}int{b}") for p in ("", "u") for b in range(2, 9)]
int_ids = [f.name for f in INTS]


def reference_values(fmt: IntFormat) -> np.ndarray:
    """Integer value of every code 0 .. 2**bits - 1, independently of lowbit: unsigned is the
    code itself; signed puts the code in the top bits of an int8 and shifts back down
    (numpy's arithmetic shift sign-extends), i.e. two's complement."""
    codes = np.arange(2**fmt.bits, dtype=np.uint8)
    if not fmt.signed:
        return codes.astype(np.int64)
    shift = 8 - fmt.bits
    return ((codes << shift).view(np.int8) >> shift).astype(np.int64)


def reference_codes(fmt: IntFormat, x: np.ndarray) -> np.ndarray:
    """numpy's round-half-even (rint), clipped to the range, as the code with that value."""
    values = reference_values(fmt)
    q = np.clip(np.rint(x.astype(np.float64)), values.min(), values.max()).astype(np.int64)
    lookup = {int(v): c for c, v in enumerate(values)}
    return np.array([lookup[int(v)] for v in q], dtype=np.uint8)


@pytest.mark.parametrize("fmt", INTS, ids=int_ids)
def test_codes_are_twos_complement(fmt):
    ref = reference_values(fmt)
    assert np.array_equal(fmt.decode_int(fmt.all_codes()).numpy(), ref)
    assert np.array_equal(fmt.decode(fmt.all_codes()).numpy(), ref.astype(np.float32))
    assert (fmt.qmin, fmt.qmax) == (ref.min(), ref.max())
    assert (fmt.min, fmt.max, fmt.levels) == (ref.min(), ref.max(), 2**fmt.bits)
    assert fmt.smallest_positive == 1
    # the signed range is [-2^(b-1), 2^(b-1) - 1], the unsigned one [0, 2^b - 1]
    if fmt.signed:
        assert (fmt.qmin, fmt.qmax) == (-(2 ** (fmt.bits - 1)), 2 ** (fmt.bits - 1) - 1)
    else:
        assert (fmt.qmin, fmt.qmax) == (0, 2**fmt.bits - 1)


@pytest.mark.parametrize("fmt", INTS, ids=int_ids)
def test_every_code_round_trips(fmt):
    codes = fmt.all_codes()
    assert torch.equal(fmt.encode(fmt.decode(codes)), codes)
    assert torch.equal(fmt.encode(fmt.decode(codes), saturate=False), codes)


@pytest.mark.parametrize("fmt", INTS, ids=int_ids)
def test_half_ties_round_to_even(fmt):
    k = np.arange(fmt.qmin - 1, fmt.qmax + 1)
    ties = (k + 0.5).astype(np.float32)
    got = fmt.decode(fmt.encode(torch.from_numpy(ties))).numpy()
    even = np.where(k % 2 == 0, k, k + 1)
    assert np.array_equal(got, np.clip(even, fmt.qmin, fmt.qmax).astype(np.float32))
    # just either side of a tie goes to the nearer integer
    above = np.nextafter(ties, np.float32(np.inf))
    below = np.nextafter(ties, np.float32(-np.inf))
    assert np.array_equal(fmt.decode(fmt.encode(torch.from_numpy(above))).numpy(),
                          np.clip(k + 1, fmt.qmin, fmt.qmax).astype(np.float32))
    assert np.array_equal(fmt.decode(fmt.encode(torch.from_numpy(below))).numpy(),
                          np.clip(k, fmt.qmin, fmt.qmax).astype(np.float32))


@pytest.mark.parametrize("fmt", INTS, ids=int_ids)
def test_random_values_match_numpy(fmt):
    rng = np.random.default_rng(fmt.bits + 10 * fmt.signed)
    x = np.concatenate([
        rng.uniform(fmt.qmin - 3, fmt.qmax + 3, 5_000),
        rng.standard_normal(1_000) * 1e6,
        [0.0, -0.0, -0.4, 0.4, np.inf, -np.inf, 3e38, -3e38],
    ]).astype(np.float32)
    got = fmt.encode(torch.from_numpy(x)).numpy()
    assert np.array_equal(got, reference_codes(fmt, x))


@pytest.mark.parametrize("fmt", INTS, ids=int_ids)
def test_saturate_false_rejects_out_of_range(fmt):
    inside = torch.tensor([fmt.qmin - 0.49, fmt.qmax + 0.49])  # these round into the range
    assert fmt.decode(fmt.encode(inside, saturate=False)).tolist() == [fmt.qmin, fmt.qmax]
    for bad in (fmt.qmin - 1.0, fmt.qmax + 1.0, float("inf")):
        with pytest.raises(ValueError, match=rf"outside the {fmt.name} range \[{fmt.qmin}, "):
            fmt.encode(torch.tensor([0.0, bad]), saturate=False)


@pytest.mark.parametrize("fmt", INTS, ids=int_ids)
def test_nan_raises(fmt):
    for saturate in (True, False):
        with pytest.raises(ValueError, match=f"{fmt.name} cannot encode NaN"):
            fmt.encode(torch.tensor([1.0, float("nan")]), saturate=saturate)


def test_construction_and_input_checks():
    for bits in (1, 9):
        with pytest.raises(ValueError, match="2..8 bits"):
            IntFormat(f"int{bits}", bits)
    with pytest.raises(TypeError, match="floating-point"):
        get_format("int4").encode(torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        get_format("int4").encode([1.0, 2.0])


def test_round_gives_float_integers():
    fmt = get_format("int4")
    q = fmt.round(torch.tensor([-9.0, -2.5, 0.49, 7.6]))
    assert q.dtype == torch.float32
    assert q.tolist() == [fmt.qmin, -2.0, 0.0, fmt.qmax]


@pytest.mark.parametrize("fmt", INTS, ids=int_ids)
@settings(max_examples=60, deadline=None)
@given(a=st.floats(-300, 300, width=32), b=st.floats(-300, 300, width=32))
def test_monotone_and_half_step(fmt, a, b):
    a, b = min(a, b), max(a, b)
    va, vb = fmt.decode(fmt.encode(torch.tensor([a, b]))).tolist()
    assert va <= vb
    if fmt.qmin <= a <= fmt.qmax:
        assert abs(va - a) <= 0.5  # the grid step is 1
