"""Codebook formats (NF4, bitsandbytes' FP4): the tables, nearest-value encoding, the tie rule,
and, when bitsandbytes is installed, its own quantize_4bit / dequantize_4bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.formats import BNB_FP4, NF4, Codebook
from lowbit.formats.codebook import NF4_LEVELS, normal_float_levels

# bitsandbytes' published tables, copied from bitsandbytes/functional.py (get_4bit_type,
# bitsandbytes 0.50): NF4 as float32 constants, FP4 in code order before dividing by 12.
BNB_NF4_PUBLISHED = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
BNB_FP4_PUBLISHED = (0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                     -0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)

CODEBOOKS = [NF4, BNB_FP4]
cb_ids = [f.name for f in CODEBOOKS]


def brute_force_nearest(fmt: Codebook, x: np.ndarray) -> np.ndarray:
    """Distance to the nearest level of each x, by comparing with every level (float64)."""
    levels = fmt.table.double().numpy()
    return np.abs(x.astype(np.float64)[:, None] - levels[None, :]).min(axis=1)


def encoded_distance(fmt: Codebook, x: np.ndarray) -> np.ndarray:
    got = fmt.decode(fmt.encode(torch.from_numpy(x))).double().numpy()
    return np.abs(x.astype(np.float64) - got)


def midpoint_neighbourhood(fmt: Codebook) -> np.ndarray:
    """float32 values at and either side of every midpoint between neighbouring levels."""
    levels = np.unique(fmt.table.double().numpy())
    mids = np.float32((levels[:-1] + levels[1:]) / 2)
    return np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)),
                           np.nextafter(mids, np.float32(-np.inf))]).astype(np.float32)


# --- the tables ------------------------------------------------------------------------------
def test_nf4_is_bitsandbytes_table():
    assert NF4_LEVELS == BNB_NF4_PUBLISHED
    assert torch.equal(NF4.table, torch.tensor(BNB_NF4_PUBLISHED, dtype=torch.float32))


def test_normal_float_levels_derive_nf4():
    """Measured: the float64 derivation differs from bitsandbytes' constants by at most
    1.1920929e-07 in absolute value (at 0.72 and -0.70, 2 float32 ulps there; 6 ulps at -0.091),
    because bitsandbytes built its table from float32 linspace probabilities. Tolerance: that
    measured maximum, rounded up to 1.2e-7."""
    derived = np.array(normal_float_levels(), dtype=np.float64)
    published = np.array(BNB_NF4_PUBLISHED, dtype=np.float64)
    assert np.abs(derived - published).max() <= 1.2e-7
    assert derived[0] == -1 and derived[-1] == 1 and derived[7] == 0
    assert np.all(np.diff(derived) > 0)
    assert (derived > 0).sum() == 8 and (derived < 0).sum() == 7


def test_bnb_fp4_values():
    published = np.array(BNB_FP4_PUBLISHED, dtype=np.float64) / 12
    got = BNB_FP4.table.double().numpy()
    assert np.array_equal(got, published.astype(np.float32))  # -0 == +0 here
    assert BNB_FP4.levels == 15  # 16 codes, +0 and -0 counted once


def test_codebook_needs_two_to_the_bits_values():
    with pytest.raises(ValueError, match="3 values for 2 bits"):
        Codebook("bad", 2, values=(0.0, 1.0, 2.0))


# --- encoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", CODEBOOKS, ids=cb_ids)
def test_every_code_round_trips(fmt):
    codes = fmt.all_codes()
    values = fmt.decode(codes)
    again = fmt.encode(values)
    # bit-identical codes, except bnb-fp4's -0 (code 8), which encodes to +0 (code 0)
    assert torch.equal(fmt.decode(again), values)
    same = values != 0
    assert torch.equal(again[same], codes[same])
    assert torch.all(again[~same] == int(fmt.encode(torch.zeros(1))[0]))


@pytest.mark.parametrize("fmt", CODEBOOKS, ids=cb_ids)
def test_encode_is_nearest_level(fmt):
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.uniform(-1.1, 1.1, 20_000),
        rng.standard_normal(5_000) * 0.3,
        np.exp2(rng.uniform(-30, 1, 5_000)) * rng.choice([-1, 1], 5_000),
    ]).astype(np.float32)
    x = np.concatenate([x, midpoint_neighbourhood(fmt)])
    bad = encoded_distance(fmt, x) != brute_force_nearest(fmt, x)
    assert not bad.any(), f"not the nearest level for x = {x[bad].tolist()}"


@pytest.mark.parametrize("fmt", CODEBOOKS, ids=cb_ids)
def test_ties_go_towards_zero(fmt):
    """At a midpoint that float32 holds exactly the two levels are equally near: the documented
    rule picks the one closer to zero. Midpoints float32 cannot hold are not ties (covered by
    the nearest-level test)."""
    levels = np.unique(fmt.table.double().numpy())
    mids = (levels[:-1] + levels[1:]) / 2
    exact = np.float32(mids).astype(np.float64) == mids
    assert exact.any()
    for lo, hi, m in zip(levels[:-1][exact], levels[1:][exact], mids[exact], strict=True):
        got = float(fmt.decode(fmt.encode(torch.tensor([m], dtype=torch.float32)))[0])
        assert got == (lo if abs(lo) < abs(hi) else hi), (lo, hi, m)


def test_tie_rule_on_a_small_codebook():
    # levels whose midpoints are all exact in float32: every midpoint is a tie
    cb = Codebook("tiny", 3, values=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0))
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    assert cb.decode(cb.encode(x)).tolist() == [-2.0, -1.0, 0.0, 0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("fmt", CODEBOOKS, ids=cb_ids)
def test_out_of_range_and_nan(fmt):
    x = torch.tensor([-5.0, 5.0, float("-inf"), float("inf")])
    assert fmt.decode(fmt.encode(x)).tolist() == [-1.0, 1.0, -1.0, 1.0]  # nearest = the ends
    with pytest.raises(ValueError, match="outside the"):
        fmt.encode(torch.tensor([1.5]), saturate=False)
    assert fmt.decode(fmt.encode(torch.tensor([1.0, -1.0]), saturate=False)).tolist() == [1, -1]
    with pytest.raises(ValueError, match="NaN"):
        fmt.encode(torch.tensor([0.0, float("nan")]))


@pytest.mark.parametrize("fmt", CODEBOOKS, ids=cb_ids)
@settings(max_examples=100, deadline=None)
@given(a=st.floats(-2, 2, width=32), b=st.floats(-2, 2, width=32))
def test_encode_monotone(fmt, a, b):
    a, b = min(a, b), max(a, b)
    va, vb = fmt.decode(fmt.encode(torch.tensor([a, b]))).tolist()
    assert va <= vb


# --- bitsandbytes itself, when installed -----------------------------------------------------
def _bnb():
    return pytest.importorskip("bitsandbytes.functional",
                               reason="bitsandbytes not installed (optional reference)")


def test_tables_equal_installed_bitsandbytes():
    F = _bnb()
    assert torch.equal(NF4.table, F.get_4bit_type("nf4", device="cpu").float())
    # bitsandbytes writes its -0 as the integer -0, i.e. +0.0; values are equal either way
    assert torch.equal(BNB_FP4.table, F.get_4bit_type("fp4", device="cpu").float())


@pytest.mark.parametrize(("fmt", "quant_type"), [(NF4, "nf4"), (BNB_FP4, "fp4")])
def test_quantize_4bit_matches_bitsandbytes(fmt, quant_type):
    F = _bnb()
    blocksize = 64
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
    absmax = state.absmax.float()
    # bitsandbytes packs two codes a byte, the first in the HIGH nibble (unlike lowbit.core.packing)
    b = packed.reshape(-1)
    bnb_codes = torch.stack([b >> 4, b & 0xF], dim=1).reshape(-1)
    # same scaling arithmetic as bitsandbytes: multiply by the reciprocal of the block absmax
    blocks = w.reshape(-1, blocksize)
    ref_absmax = blocks.abs().amax(dim=1)
    assert torch.equal(absmax, ref_absmax)
    scaled = (blocks * (1.0 / ref_absmax)[:, None]).clamp(-1, 1)
    ours = fmt.encode(scaled).reshape(-1)
    # codes may differ only where the value is the same (bnb-fp4's +0/-0); random data has
    # no exact ties, so any other difference is a disagreement about the nearest level
    assert torch.equal(fmt.decode(ours), fmt.decode(bnb_codes))
    assert (ours != bnb_codes).sum() == ((ours != bnb_codes) & (fmt.decode(ours) == 0)).sum()
    deq = F.dequantize_4bit(packed, state).reshape(-1, blocksize)
    assert torch.equal(deq, fmt.decode(ours).reshape(-1, blocksize) * absmax[:, None])
