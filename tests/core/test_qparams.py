"""The qparams primitives: RTN is their composition, and any slice (whole tensor, one group, one
column, some rows) gives the same codes and values as the whole tensor, exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.core.qparams import (
    QParams,
    choose_qparams,
    dequantize_codes,
    quantize_with_qparams,
)
from lowbit.core.qtensor import QTensor
from lowbit.methods.rtn import quantize_rtn
from tests.methods.test_rtn import NAMED, weights

SCHEMES = [*NAMED, "nf4-g64-dq", "int4-asym-g32-zpint", "int8-asym-channel-zpint",
           "int3-asym-tensor-zpint", "int4-asym-g128-bf16scale-zpint", "int2-asym-g16-zpint"]


@pytest.mark.parametrize("name", SCHEMES)
def test_rtn_is_the_composition(name: str) -> None:
    w = weights((24, 200))
    qp = choose_qparams(w, name)
    codes = quantize_with_qparams(w, qp)
    assert codes.dtype == torch.uint8 and codes.shape == w.shape
    qt = QTensor.from_codes(codes, qp)
    rtn = quantize_rtn(w, name)
    assert qt.tensors().keys() == rtn.tensors().keys()
    for part, t in rtn.tensors().items():
        assert torch.equal(qt.tensors()[part], t), part
    assert torch.equal(dequantize_codes(codes, qp), rtn.dequantize())
    # the working values are the stored ones, decoded
    assert torch.equal(qp.scale, rtn.effective_scale())
    back = rtn.qparams()
    assert torch.equal(back.scale, qp.scale)
    assert (back.zero is None) == (qp.zero is None)
    assert back.zero is None or torch.equal(back.zero, qp.zero)


@pytest.mark.parametrize("name", SCHEMES)
def test_one_column_at_a_time_equals_whole_tensor(name: str) -> None:
    w = weights((16, 72), seed=3)  # 72: a partial last block for every gN here
    qp = choose_qparams(w, name)
    whole = quantize_with_qparams(w, qp)
    deq = dequantize_codes(whole, qp)
    for j in range(w.shape[1]):
        col = slice(j, j + 1)
        c = quantize_with_qparams(w[:, col], qp, cols=col)
        assert torch.equal(c, whole[:, col]), j
        assert torch.equal(dequantize_codes(c, qp, cols=col), deq[:, col]), j


@pytest.mark.parametrize("name", ["int4-sym-g32", "int4-asym-g32-zpint", "nvfp4", "mxfp4",
                                  "int8-sym-channel", "fp8-e5m2-tensor"])
def test_groups_and_row_slices_equal_whole_tensor(name: str) -> None:
    w = weights((20, 100), seed=4)
    qp = choose_qparams(w, name)
    whole = quantize_with_qparams(w, qp)
    n = qp.group_size
    for start in range(0, 100, n):
        cols = slice(start, min(start + n, 100))
        assert torch.equal(quantize_with_qparams(w[:, cols], qp, cols=cols), whole[:, cols])
    for rows, cols in [(slice(3, 11), slice(None)), (slice(0, 1), slice(40, 57)),
                       (slice(19, 20), slice(99, 100)), (slice(5, 20), slice(32, 100))]:
        got = quantize_with_qparams(w[rows, cols], qp, rows=rows, cols=cols)
        assert torch.equal(got, whole[rows, cols]), (rows, cols)
        assert torch.equal(dequantize_codes(got, qp, rows=rows, cols=cols),
                           dequantize_codes(whole, qp)[rows, cols])


def test_row_slicing_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of rows that start mid-way and span several internal row chunks."""
    from lowbit.core import grouping

    monkeypatch.setattr(grouping, "CHUNK_ELEMENTS", 64)  # 8-row chunks at 8 columns a row
    w = weights((40, 8), seed=5)
    qp = choose_qparams(w, "int4-sym-g16")
    assert len(grouping.row_slices(40, 8)) == 5
    whole = quantize_with_qparams(w, qp)
    rows = slice(5, 37)
    assert torch.equal(quantize_with_qparams(w[rows], qp, rows=rows), whole[rows])


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 150), seed=st.integers(0, 2**16),
       name=st.sampled_from(SCHEMES))
def test_any_column_range_matches(rows, cols, seed, name) -> None:
    w = weights((rows, cols), seed=seed)
    qp = choose_qparams(w, name)
    whole = quantize_with_qparams(w, qp)
    g = torch.Generator().manual_seed(seed)
    a, b = sorted(torch.randint(0, cols + 1, (2,), generator=g).tolist())
    b = max(b, a + 1) if a < cols else cols
    a = min(a, b - 1)
    span = slice(a, b)
    assert torch.equal(quantize_with_qparams(w[:, span], qp, cols=span), whole[:, span])


def test_qparams_stored_pieces() -> None:
    qp = choose_qparams(weights((8, 64)), "nvfp4")
    assert isinstance(qp, QParams) and qp.shape == (8, 64) and qp.group_size == 16
    assert set(qp.stored()) == {"scale", "tensor_scale"} and qp.zero is None
    qp = choose_qparams(weights((8, 64)), "int4-asym-g32-zpint")
    assert qp.stored_zero.dtype == torch.uint8 and qp.stored_zero.shape == (8, 2)
    assert torch.equal(qp.zero, qp.stored_zero.float())


def test_slice_errors_name_the_argument() -> None:
    w = weights((8, 64))
    qp = choose_qparams(w, "int4-sym-g32")
    with pytest.raises(ValueError, match=r"w has 1 cols but cols=slice\(0, 2, None\) covers 2"):
        quantize_with_qparams(w[:, :1], qp, cols=slice(0, 2))
    with pytest.raises(ValueError, match="w has 8 rows but rows=.* covers 4 of the weight's 8"):
        quantize_with_qparams(w[:, :1], qp, rows=slice(0, 4), cols=slice(0, 1))
    with pytest.raises(TypeError, match="cols: expected a slice with step 1"):
        quantize_with_qparams(w[:, ::2], qp, cols=slice(0, 64, 2))
    with pytest.raises(TypeError, match="cols: expected a slice"):
        quantize_with_qparams(w[:, :1], qp, cols=3)
    with pytest.raises(ValueError, match="w: expected a 2-D tensor"):
        quantize_with_qparams(w[0], qp)
    with pytest.raises(TypeError, match="codes: expected uint8"):
        dequantize_codes(w.to(torch.int32), qp)
    with pytest.raises(ValueError, match=r"codes: expected uint8 of shape \(8, 64\)"):
        QTensor.from_codes(torch.zeros(8, 63, dtype=torch.uint8), qp)


def test_choose_qparams_names_the_weight() -> None:
    w = weights((8, 64))
    w[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"blk\.7.*\[2, 3\]"):
        choose_qparams(w, "int4-asym-g32-zpint", name="blk.7")
    with pytest.raises(ValueError, match="unknown part 'zp'"):
        choose_qparams(w, "int4-asym-g32-zp")


# --- input-column permutation (act-order) --------------------------------------------------
@pytest.mark.parametrize("name", ["int4-asym-g32-zpint", "int4-sym-g32-out3", "nf4-g64-dq"])
def test_permuted_qtensor_dequantizes_in_original_order(name: str) -> None:
    w = weights((12, 96), seed=6)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(0)).to(torch.int32)
    wp = w[:, perm.long()]  # stored column k is original column perm[k]
    plain = quantize_rtn(wp, name)
    qt = QTensor.from_tensors(plain.scheme, plain.shape, {**plain.tensors(), "perm": perm})
    if plain.outlier_index is None:  # built from the primitives, the same tensor
        qp = choose_qparams(wp, name)
        built = QTensor.from_codes(quantize_with_qparams(wp, qp), qp, perm=perm)
        assert torch.equal(built.codes, qt.codes) and torch.equal(built.perm, perm)
    expected = torch.empty_like(w)
    expected[:, perm.long()] = plain.dequantize()
    assert torch.equal(qt.dequantize(), expected)
    assert qt.nbytes == plain.nbytes + 96 * 4  # the perm is stored as int32, and counted


def test_identity_perm_changes_nothing_but_size() -> None:
    w = weights((8, 64))
    qt = lowbit.quantize_tensor(w, "int4-asym-g32")
    with_perm = QTensor.from_tensors(qt.scheme, qt.shape,
                                     {**qt.tensors(), "perm": torch.arange(64, dtype=torch.int32)})
    assert torch.equal(with_perm.dequantize(), qt.dequantize())
    assert with_perm.bits_per_weight == pytest.approx(qt.bits_per_weight + 32 / 8)


@pytest.mark.parametrize(("perm", "message"), [
    (torch.arange(64), r"perm should be int32 of shape \(64,\), got torch.int64"),
    (torch.arange(63, dtype=torch.int32), r"perm should be int32 of shape \(64,\)"),
    (torch.zeros(64, dtype=torch.int32), r"perm is not a permutation of range\(64\)"),
    (torch.arange(1, 65, dtype=torch.int32), r"perm is not a permutation of range\(64\)"),
])
def test_bad_perm_is_rejected(perm: torch.Tensor, message: str) -> None:
    qt = lowbit.quantize_tensor(weights((8, 64)), "int4-sym-g32")
    with pytest.raises(ValueError, match=r"blk\.1: " + message):
        QTensor.from_tensors(qt.scheme, qt.shape, {**qt.tensors(), "perm": perm}, name="blk.1")


def test_primitives_are_exported_lazily() -> None:
    import lowbit.core.qparams as qparams

    for name in ("QParams", "choose_qparams", "quantize_with_qparams", "dequantize_codes"):
        assert getattr(lowbit, name) is getattr(qparams, name)


@pytest.mark.parametrize("name", ["int4-asym-g32", "int4-asym-g32-zpint", "nf4-g64", "mxfp4",
                                  "nvfp4", "fp8-e4m3-g48"])
def test_concat_groups_of_slices_equals_choosing_on_the_whole(name: str) -> None:
    from lowbit.core.qparams import concat_groups

    w = torch.randn(16, 200, generator=torch.Generator().manual_seed(4))
    whole = choose_qparams(w, name)
    n = whole.group_size
    ts = whole.tensor_scale
    parts = [choose_qparams(w[:, c:c + 2 * n], name, tensor_scale=ts)
             for c in range(0, 200, 2 * n)]  # two groups at a time, the last one short
    joined = concat_groups(parts)
    assert joined.shape == whole.shape
    for key, value in whole.stored().items():
        assert torch.equal(joined.stored()[key], value), key
    assert torch.equal(joined.scale, whole.scale)


def test_concat_groups_refuses_what_depends_on_the_whole_weight() -> None:
    from lowbit.core.qparams import concat_groups

    w = torch.randn(8, 64)
    for name in ("int4-sym-channel", "int4-sym-g32-dq"):
        with pytest.raises(ValueError, match="depend on the whole"):
            concat_groups([choose_qparams(w, name)])
    with pytest.raises(ValueError, match="not a whole number of groups"):
        concat_groups([choose_qparams(w[:, :40], "int4-sym-g32"),
                       choose_qparams(w[:, 40:], "int4-sym-g32")])
    with pytest.raises(ValueError, match="another tensor scale"):
        concat_groups([choose_qparams(w[:, :32], "nvfp4"), choose_qparams(w[:, 32:] * 3, "nvfp4")])
    with pytest.raises(ValueError, match="has none"):
        choose_qparams(w, "int4-sym-g32", tensor_scale=torch.ones(1))
