"""Round-to-nearest against the plain reference, bit counts, edge cases and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from tests.reference_rtn import reference_dequantize

NAMED = [
    "int8-sym-channel", "int8-sym-g32", "int4-asym-g128", "int4-sym-g32", "int2-asym-g64",
    "nf4-g64", "fp8-e4m3-channel", "fp8-e5m2-tensor", "fp4-e2m1-g32", "mxfp8", "mxfp6",
    "mxfp4", "nvfp4", "int3-sym-g16", "int5-asym-channel", "int6-sym-tensor", "int7-asym-g256",
    "bnb-fp4-g64", "fp6-e3m2-g32", "int8-sym-g32-bf16scale", "int4-sym-g32-e8m0scale",
]


def weights(shape=(24, 200), seed=0, scale=0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * scale
    w[0, 0] = 12 * scale  # an outlier, so that some blocks have a wide range
    return w


@pytest.mark.parametrize("name", NAMED)
def test_matches_plain_reference(name: str) -> None:
    w = weights()
    qt = lowbit.quantize_tensor(w, name)
    assert torch.equal(qt.dequantize(), reference_dequantize(w, Scheme.parse(name)))


# Not a fixed point: an integer grid under an E8M0 scale. A weight rounded onto the extra
# negative level (-8 for int4) raises the block's absmax to 8 * scale, and the MX rule then
# picks the next power of two as the scale.
FIXED_POINT = [n for n in NAMED if n != "int4-sym-g32-e8m0scale"]


@pytest.mark.parametrize("name", FIXED_POINT)
def test_dequantize_of_quantize_is_a_fixed_point(name: str) -> None:
    w = weights(seed=1)
    once = lowbit.quantize_tensor(w, name).dequantize()
    twice = lowbit.quantize_tensor(once, name).dequantize()
    assert torch.equal(once, twice)


def test_issue_example_bits_per_weight() -> None:
    qt = lowbit.quantize_tensor(torch.randn(256, 512), "int4-asym-g128")
    assert qt.bits_per_weight == 4.25


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # element bits + stored scale (and zero) bits per group, exactly
        ("int4-asym-g128", 4 + 16 / 128 + 16 / 128),
        ("int4-sym-g32", 4 + 16 / 32),
        ("int8-sym-g32", 8 + 16 / 32),
        ("int8-sym-channel", 8 + 32 / 512),
        ("nf4-g64", 4 + 16 / 64),
        ("mxfp4", 4 + 8 / 32),
        ("mxfp6", 6 + 8 / 32),
        ("nvfp4", 4 + 8 / 16 + 32 / (256 * 512)),
        ("fp8-e5m2-tensor", 8 + 32 / (256 * 512)),
        # QLoRA: 4 + 8/64 + 32/(64*256), plus the one fp32 mean
        ("nf4-g64-dq", 4 + 8 / 64 + 32 / (64 * 256) + 32 / (256 * 512)),
        ("int2-asym-g64", 2 + 32 / 64),
        ("int3-sym-g128", 3 + 16 / 128),
    ],
)
def test_bits_per_weight_counts_everything(name: str, expected: float) -> None:
    qt = lowbit.quantize_tensor(weights((256, 512)), name)
    assert qt.bits_per_weight == pytest.approx(expected, rel=1e-12)
    assert qt.nbytes == sum(t.numel() * t.element_size() for t in qt.tensors().values())


def test_outliers_are_kept_exactly_in_fp32() -> None:
    w = weights((32, 256))
    qt = lowbit.quantize_tensor(w, "int4-sym-g32-out16")
    assert qt.outlier_index.numel() == 16
    top = torch.topk(w.abs().reshape(-1), 16).indices.sort().values
    assert torch.equal(qt.outlier_index.long(), top)
    deq = qt.dequantize().reshape(-1)
    assert torch.equal(deq[top], w.reshape(-1)[top])
    assert qt.bits_per_weight == pytest.approx(4.5 + 16 * (32 + 32) / w.numel())
    # taking the outliers out shrinks the error of everything else
    plain = lowbit.weight_error(w, lowbit.quantize_tensor(w, "int4-sym-g32"))
    assert lowbit.weight_error(w, qt).rel_l2 < plain.rel_l2


def test_outlier_fraction() -> None:
    qt = lowbit.quantize_tensor(weights((40, 250)), "int4-sym-g32-out1%")
    assert qt.outlier_index.numel() == 100


def test_double_quant_error_close_to_plain() -> None:
    w = weights((64, 1024), seed=3)
    plain = lowbit.weight_error(w, lowbit.quantize_tensor(w, "nf4-g64")).rel_l2
    dq = lowbit.weight_error(w, lowbit.quantize_tensor(w, "nf4-g64-dq")).rel_l2
    # int8 scales with 256 per block move each scale by < 1/254 of the block's spread: the
    # weight error may change by a few percent of itself, not more
    assert abs(dq - plain) < 0.05 * plain


def test_partial_last_block_uses_only_its_own_weights() -> None:
    w = torch.zeros(2, 40)
    w[:, :32] = 1.0  # first block: large
    w[:, 32:] = torch.tensor([0.001, -0.002, 0.003, 0.0005, 0.001, 0.002, -0.001, 0.0])
    qt = lowbit.quantize_tensor(w, "int8-sym-g32")
    assert qt.scale.shape == (2, 2)
    # the second block's scale comes from its 8 weights only: -0.002 / -128... its max |w| is
    # 0.003, so scale = 0.003 / -128 (in fp16)
    assert qt.scale[0, 1].item() == pytest.approx(torch.tensor(0.003 / -128).half().item())
    err = (qt.dequantize() - w)[:, 32:].abs().max()
    assert err <= abs(qt.scale[0, 1].float()) / 2


def test_constant_and_zero_weights() -> None:
    for name in ["int4-asym-g32", "int4-sym-g32", "nf4-g64", "mxfp4", "nvfp4", "fp8-e4m3-tensor"]:
        z = torch.zeros(8, 64)
        assert torch.equal(lowbit.quantize_tensor(z, name).dequantize(), z), name
    c = torch.full((8, 64), 0.25)  # 0.25 is exact in fp16, and lands on every grid
    for name in ["int4-asym-g32", "int4-sym-g32", "nf4-g64", "mxfp4", "fp8-e4m3-channel"]:
        assert torch.equal(lowbit.quantize_tensor(c, name).dequantize(), c), name


def test_symmetric_error_bound() -> None:
    # symmetric int: every weight is within one scale step of its grid value (half a step
    # inside the range, up to a full step for the clamped top level of the opposite sign)
    w = weights((16, 256), seed=5)
    qt = lowbit.quantize_tensor(w, "int4-sym-g32")
    step = qt.effective_scale().abs().repeat_interleave(32, dim=1)
    assert bool(((qt.dequantize() - w).abs() <= step * (1 + 1e-6)).all())


def test_asymmetric_beats_symmetric_on_shifted_data() -> None:
    w = weights((32, 256), seed=2) + 0.05  # all-positive-ish groups: sym wastes half its range
    sym = lowbit.weight_error(w, lowbit.quantize_tensor(w, "int4-sym-g128")).rel_l2
    asym = lowbit.weight_error(w, lowbit.quantize_tensor(w, "int4-asym-g128")).rel_l2
    assert asym < sym


def test_mxfp4_matches_ocp_mx_with_ml_dtypes() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import numpy as np

    w = weights((8, 128), seed=4)
    qt = lowbit.quantize_tensor(w, "mxfp4")
    blocks = w.reshape(8, 4, 32).numpy()
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    scale = np.exp2(np.floor(np.log2(amax)) - 2)  # emax of E2M1 is 2 (OCP MX v1.0 table 1)
    elems = (blocks / scale).astype(ml_dtypes.float4_e2m1fn).astype(np.float32)  # saturating
    assert np.array_equal(qt.dequantize().numpy(), (elems * scale).reshape(8, 128))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 20), cols=st.integers(1, 300),
    name=st.sampled_from(NAMED + ["nf4-g64-dq", "int4-sym-g32-out3"]),
    seed=st.integers(0, 2**16),
)
def test_any_shape_round_trips_through_stored_tensors(rows, cols, name, seed) -> None:
    w = weights((rows, cols), seed=seed)
    qt = lowbit.quantize_tensor(w, name)
    deq = qt.dequantize()
    assert deq.shape == w.shape and bool(torch.isfinite(deq).all())
    again = QTensor.from_tensors(qt.scheme, qt.shape, qt.tensors())
    assert torch.equal(again.dequantize(), deq)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_names_tensor_and_index(bad: float) -> None:
    w = weights((8, 64))
    w[5, 17] = bad
    with pytest.raises(ValueError, match=r"layers\.3\.q_proj.*\[5, 17\]"):
        lowbit.quantize_tensor(w, "int4-sym-g32", name="layers.3.q_proj")


@pytest.mark.parametrize(
    ("w", "message"),
    [
        (torch.zeros(0, 8), "empty"),
        (torch.zeros(16), "2-D"),
        (torch.zeros(2, 3, 4), "2-D"),
        (torch.zeros(4, 8, dtype=torch.int32), "floating-point"),
    ],
)
def test_bad_weights_get_clear_errors(w: torch.Tensor, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        lowbit.quantize_tensor(w, "int4-sym-g32", name="lm.w")


def test_from_tensors_rejects_wrong_sizes() -> None:
    qt = lowbit.quantize_tensor(weights((8, 64)), "int4-sym-g32")
    parts = qt.tensors()
    parts["scale"] = parts["scale"][:, :1]
    with pytest.raises(ValueError, match=r"blk\.0: scale should have shape \(8, 2\)"):
        QTensor.from_tensors(qt.scheme, qt.shape, parts, name="blk.0")
    with pytest.raises(ValueError, match="codes should be"):
        QTensor.from_tensors(qt.scheme, (8, 65), qt.tensors(), name="blk.0")


def test_weight_error_statistics() -> None:
    w = weights((8, 64))
    qt = lowbit.quantize_tensor(w, "int4-sym-g32")
    e = lowbit.weight_error(w, qt)
    d = (w - qt.dequantize()).double()
    assert e.rel_l2 == pytest.approx(float(d.norm() / w.double().norm()))
    assert e.max_abs == pytest.approx(float(d.abs().max()))
    assert e.sqnr_db == pytest.approx(-20 * math.log10(e.rel_l2))
    assert not e.exact
    exact = lowbit.weight_error(qt.dequantize(), lowbit.quantize_tensor(qt.dequantize(),
                                                                          "int4-sym-g32"))
    assert exact.exact and exact.rel_l2 == 0 and exact.sqnr_db == math.inf
