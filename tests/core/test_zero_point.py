"""The integer zero point (``zpint``): exact bits on edge groups, and a plain per-group reference.

``w = (code - zp) * scale`` with ``scale = (max - min) / qmax`` and ``zp = clamp(round(-min /
scale), 0, qmax)``, min and max widened to include 0 (see lowbit.core.qparams)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.core.scheme import Scheme
from tests.methods.test_rtn import weights

# One group a row (channel granularity, fp32 scales), int2: qmax = 3. Each row is an edge case
# whose scale, zero point, codes and values are worked out by hand.
EDGE_ROWS = {
    "min is 0": ([0.0, 1.0, 2.0, 3.0], 1.0, 0, [0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0]),
    "max is 0": ([-3.0, -2.0, -1.0, 0.0], 1.0, 3, [0, 1, 2, 3], [-3.0, -2.0, -1.0, 0.0]),
    "negative only": ([-6.0, -4.0, -2.0, -2.0], 2.0, 3, [0, 1, 2, 2], [-6.0, -4.0, -2.0, -2.0]),
    "positive only": ([2.0, 4.0, 6.0, 6.0], 2.0, 0, [1, 2, 3, 3], [2.0, 4.0, 6.0, 6.0]),
    "zero group": ([0.0, 0.0, 0.0, 0.0], 0.0, 0, [0, 0, 0, 0], [0.0, 0.0, 0.0, 0.0]),
    # ties round half to even: 0.5 -> 0 and 1.5 -> 2 (then + zp 1)
    "ties up": ([-1.0, 0.5, 1.5, 2.0], 1.0, 1, [0, 1, 3, 3], [-1.0, 0.0, 2.0, 2.0]),
    # -1.5 -> -2 and -0.5 -> -0 (then + zp 2)
    "ties down": ([-2.0, -1.5, -0.5, 1.0], 1.0, 2, [0, 0, 2, 3], [-2.0, -2.0, 0.0, 1.0]),
    # all equal: the range is widened to [0, 3], so 3 = 3 * 1 exactly
    "all equal": ([3.0, 3.0, 3.0, 3.0], 1.0, 0, [3, 3, 3, 3], [3.0, 3.0, 3.0, 3.0]),
    "all equal negative": ([-3.0, -3.0, -3.0, -3.0], 1.0, 3, [0, 0, 0, 0], [-3.0] * 4),
}


def test_edge_groups_exact_bits() -> None:
    w = torch.tensor([row[0] for row in EDGE_ROWS.values()])
    qt = lowbit.quantize_tensor(w, "int2-asym-channel-zpint")
    assert qt.zero.dtype == torch.uint8 and qt.scale.dtype == torch.float32
    assert qt.scale.view(-1).tolist() == [row[1] for row in EDGE_ROWS.values()]
    assert qt.zero.view(-1).tolist() == [row[2] for row in EDGE_ROWS.values()]
    codes = qt.element_values().to(torch.int64)
    assert codes.tolist() == [row[3] for row in EDGE_ROWS.values()]
    deq = qt.dequantize()
    expected = torch.tensor([row[4] for row in EDGE_ROWS.values()])
    assert torch.equal(deq.view(torch.int32), expected.view(torch.int32))  # bits, signs of 0 too


def test_all_equal_group_is_not_exact_in_general() -> None:
    """Unlike the float zero point, a constant group is only as exact as ``c / qmax`` in the
    scale format: 0.25 under int4 with fp16 scales comes back as 15 * fp16(0.25 / 15)."""
    c = torch.full((2, 32), 0.25)
    qt = lowbit.quantize_tensor(c, "int4-asym-g32-zpint")
    step = torch.tensor(0.25 / 15, dtype=torch.float32).half().float()
    assert torch.equal(qt.dequantize(), torch.full((2, 32), float(15 * step)))
    assert torch.equal(lowbit.quantize_tensor(c, "int4-asym-g32").dequantize(), c)


def test_zero_is_exactly_representable() -> None:
    """0 is on every zpint grid (min and max are widened to include it): zeros stay zeros."""
    w = weights((16, 128), seed=7) + 0.01  # mostly positive groups
    w[:, ::5] = 0.0
    deq = lowbit.quantize_tensor(w, "int3-asym-g32-zpint").dequantize()
    assert bool((deq[:, ::5] == 0).all())


def reference_zpint(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Quantize and dequantize group by group in plain Python numbers, following the rule in
    lowbit.core.qparams's docstring (the scale rounded to its format first)."""
    fmt, sfmt = scheme.element_format, scheme.scale_fmt
    n = scheme.group_size(w.shape[1])
    out = torch.empty_like(w)
    for r in range(w.shape[0]):
        for c in range(0, w.shape[1], n):
            g = w[r, c:c + n]
            lo, hi = min(float(g.min()), 0.0), max(float(g.max()), 0.0)
            raw = torch.tensor(hi, dtype=torch.float32) - torch.tensor(lo, dtype=torch.float32)
            s = float(sfmt.decode(sfmt.encode((raw / fmt.qmax).reshape(1))))
            s32 = torch.tensor(s, dtype=torch.float32)
            zp = 0 if s == 0 else min(max(round(float(-torch.tensor(lo) / s32)), 0), fmt.qmax)
            safe = s32 if s != 0 else torch.tensor(1.0)
            q = (torch.round(g / safe) + zp).clamp(0, fmt.qmax) if s != 0 else torch.zeros_like(g)
            out[r, c:c + n] = (q - zp) * s32
    return out


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), gran=st.sampled_from(["g16", "g32", "channel"]),
       scale=st.sampled_from(["fp16", "bf16", "fp32"]),
       magnitude=st.sampled_from([1e-7, 1e-3, 1.0, 300.0]), shift=st.floats(-2, 2),
       seed=st.integers(0, 2**16))
def test_matches_plain_reference(bits, gran, scale, magnitude, shift, seed) -> None:
    """Tiny magnitudes push fp16 scales subnormal (the zero point then clamps), shifts make
    one-signed groups."""
    name = f"int{bits}-asym-{gran}-{scale}scale-zpint"
    scheme = Scheme.parse(name)
    w = (weights((6, 48), seed=seed, scale=1.0) + shift) * magnitude
    qt = lowbit.quantize_tensor(w, scheme)
    assert torch.equal(qt.dequantize(), reference_zpint(w, scheme))


def test_error_within_one_step() -> None:
    # rounding moves a weight by half a step; the zero point's own rounding can push an end of
    # the range one code past qmax, where it clamps: at most one step in all
    w = weights((32, 256), seed=8)
    qt = lowbit.quantize_tensor(w, "int4-asym-g32-zpint")
    step = qt.effective_scale().repeat_interleave(32, dim=1)
    assert bool(((qt.dequantize() - w).abs() <= step * (1 + 1e-6)).all())
    plain = lowbit.weight_error(w, lowbit.quantize_tensor(w, "int4-asym-g32"))
    assert lowbit.weight_error(w, qt).rel_l2 < 2 * plain.rel_l2  # same grid size, within 2x


def test_zpint_bits_per_weight() -> None:
    # the uint8 zero point costs 8 bits a group where the fp16 one costs 16
    qt = lowbit.quantize_tensor(weights((256, 512)), "int4-asym-g128-zpint")
    assert qt.bits_per_weight == 4 + 16 / 128 + 8 / 128


def test_bad_zero_point_is_rejected() -> None:
    qt = lowbit.quantize_tensor(weights((8, 64)), "int4-asym-g32-zpint")
    from lowbit.core.qtensor import QTensor

    with pytest.raises(ValueError, match=r"blk\.2: an integer zero point .* in \[0, 15\]"):
        QTensor.from_tensors(qt.scheme, qt.shape, {**qt.tensors(), "zero": qt.zero + 16},
                             name="blk.2")
    with pytest.raises(ValueError, match="should be uint8 codes"):
        QTensor.from_tensors(qt.scheme, qt.shape, {**qt.tensors(), "zero": qt.zero.half()})
    with pytest.raises(ValueError, match=r"zero should have shape \(8, 2\)"):
        QTensor.from_tensors(qt.scheme, qt.shape, {**qt.tensors(), "zero": qt.zero[:, :1]})
