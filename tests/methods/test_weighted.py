"""rtn-imatrix (importance-weighted scale search) against the plain per-group transcription
(tests/methods/reference_weighted.py), its weighted error against RTN's on every kind of
scheme, what uniform and non-uniform importance do, refusals, and the registered method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.calibration.stats import LayerStats
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.methods import get_method
from lowbit.methods.rtn import quantize_rtn
from lowbit.methods.weighted import group_error, quantize_weighted
from tests.methods.reference_weighted import reference_weighted


def heavy(shape=(16, 128), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.02 / torch.rand(shape, generator=g).add(0.2)


def skewed(n: int, seed: int = 1) -> torch.Tensor:
    """Importance spread over four orders of magnitude, like real activations' x^2."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)).pow(4).mul(100)


def errors(w: torch.Tensor, imp: torch.Tensor, qt: QTensor) -> torch.Tensor:
    """Each group's importance-weighted error of ``qt`` (outliers excluded, as they are kept)."""
    keep = torch.ones_like(w)
    if qt.outlier_index is not None:
        keep.view(-1)[qt.outlier_index.long()] = 0.0
    return group_error(w * keep, keep * imp.unsqueeze(0), qt.qparams())


REFERENCE_SCHEMES = ["int4-sym-g32", "int3-sym-g16", "int4-asym-g32", "int3-asym-g32-zpint",
                     "nf4-g32", "fp4-e2m1-g32", "fp8-e4m3-g32", "mxfp4", "nvfp4"]


@pytest.mark.parametrize("scheme", REFERENCE_SCHEMES)
def test_matches_the_plain_transcription(scheme: str) -> None:
    # float32 (lowbit) against float64 (reference): a stored scale can differ only where the two
    # land either side of a rounding boundary of the scale format, or two candidates tie.
    # Measured: 0 groups differ for every scheme here; 2 % allows such ties. (NVFP4's block
    # scale times its fp32 tensor scale is compared to 1e-6, the float32 product's rounding.)
    w, imp = heavy(), skewed(128)
    qt = quantize_weighted(w, scheme, imp)
    scale, zero, error = reference_weighted(w, imp, scheme)
    ours_scale = qt.effective_scale().double().numpy()
    assert (~np.isclose(ours_scale, scale, rtol=1e-6, atol=0)).mean() <= 0.02
    if qt.zero is not None:
        z = qt.effective_zero().double().numpy()
        if Scheme.parse(scheme).zero_point == "int":
            z = -z * ours_scale
        assert (~np.isclose(z, zero, rtol=1e-6, atol=0)).mean() <= 0.02
    ours = errors(w, imp, qt).double().numpy()
    assert abs(ours.sum() - error.sum()) <= 1e-4 * error.sum()


PROPERTY_SCHEMES = ["int4-sym-g32", "int2-sym-g16", "int8-sym-channel", "int4-asym-g48",
                    "int3-asym-g32-zpint", "int4-asym-tensor", "int4-sym-g32-out1%", "nf4-g64",
                    "fp4-e2m1-g32", "fp8-e5m2-g32-bf16scale", "fp6-e2m3-channel", "mxfp4",
                    "mxfp8", "nvfp4", "int5-asym-g64-fp32scale"]


@settings(max_examples=25, deadline=None)
@given(scheme=st.sampled_from(PROPERTY_SCHEMES), seed=st.integers(0, 2**16),
       rows=st.integers(1, 12), cols=st.integers(16, 100), spread=st.floats(0.0, 6.0))
def test_never_above_rtn_on_any_group(scheme: str, seed: int, rows: int, cols: int,
                                      spread: float) -> None:
    # RTN's scale is the first candidate and a group moves only to a strictly better one.
    w = heavy((rows, cols), seed)
    imp = torch.rand(cols, generator=torch.Generator().manual_seed(seed + 1)).pow(spread)
    qt, rtn = quantize_weighted(w, scheme, imp, grid=8), quantize_rtn(w, scheme)
    assert bool((errors(w, imp, qt) <= errors(w, imp, rtn)).all())
    assert qt.nbytes == rtn.nbytes


@pytest.mark.parametrize("scheme", ["int4-asym-g32", "int4-sym-g32", "nvfp4", "mxfp4", "nf4-g64"])
def test_uniform_importance_is_one_search_whatever_its_size(scheme: str) -> None:
    w = heavy((16, 256))
    ones = quantize_weighted(w, scheme, torch.ones(256))
    for c in (1e-6, 3.0, 1e4):
        other = quantize_weighted(w, scheme, torch.full((256,), c))
        assert all(torch.equal(a, b) for a, b in zip(ones.tensors().values(),
                                                     other.tensors().values()))


@pytest.mark.parametrize("scheme", ["int4-asym-g32", "int3-sym-g32", "nvfp4", "nf4-g64"])
def test_non_uniform_importance_moves_scales_and_wins_on_its_own_measure(scheme: str) -> None:
    # Each run's choice is among the other's candidates, so under the skewed importance the
    # skewed run is never worse on any group; it chooses other scales for some groups and wins.
    w, imp = heavy((16, 256)), skewed(256)
    uniform = quantize_weighted(w, scheme, torch.ones(256))
    weighted = quantize_weighted(w, scheme, imp)
    assert not torch.equal(uniform.effective_scale(), weighted.effective_scale())
    ours, theirs = errors(w, imp, weighted), errors(w, imp, uniform)
    assert bool((ours <= theirs).all()) and float(ours.sum()) < float(theirs.sum())


def test_zero_importance_is_rtn() -> None:
    w = heavy()
    qt, rtn = quantize_weighted(w, "int4-asym-g32", torch.zeros(128)), quantize_rtn(
        w, "int4-asym-g32")
    assert all(torch.equal(a, b) for a, b in zip(qt.tensors().values(), rtn.tensors().values()))


def test_double_quantized_scales_still_search() -> None:
    # dq rounds the chosen scales together after the search: no per-group guarantee, but the
    # total weighted error still drops well below RTN's (measured 28 % lower here).
    w, imp = heavy((32, 256)), skewed(256)
    qt, rtn = quantize_weighted(w, "int4-sym-g32-dq", imp), quantize_rtn(w, "int4-sym-g32-dq")
    assert float(errors(w, imp, qt).sum()) < 0.95 * float(errors(w, imp, rtn).sum())


@pytest.mark.parametrize("importance, match", [
    (torch.ones(127), "importance has 127 values, but the weight has 128"),
    (-torch.ones(128), "finite and >= 0"),
    (torch.full((128,), float("nan")), "finite and >= 0"),
])
def test_bad_importance_is_refused_naming_the_layer(importance, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        quantize_weighted(heavy(), "int4-sym-g32", importance, name="blk.q_proj")
    assert "blk.q_proj" in str(err.value)


def test_registered_method_reads_x2_mean_and_checks_options() -> None:
    w, imp = heavy(), skewed(128)
    method = get_method("rtn-imatrix")
    assert method.needs == frozenset({"x2_mean"})
    stats = LayerStats(n_tokens=10, x2_mean=imp.double())
    qt = method.quantize_weight(w, "int4-asym-g32", stats, name="layer")
    assert torch.equal(qt.codes, quantize_weighted(w, "int4-asym-g32", imp).codes)
    with pytest.raises(ValueError, match="needs calibration statistics"):
        method.quantize_weight(w, "int4-asym-g32", None, name="layer")
    with pytest.raises(ValueError, match="max_shrink"):
        method.with_options(max_shrink=1.5).quantize_weight(w, "int4-asym-g32", stats)
    # grid=2 tries 1, 0.75 and 0.5, all among grid=20's factors: never better on a group
    coarse = method.with_options(grid=2).quantize_weight(w, "int4-asym-g32", stats)
    assert bool((errors(w, imp, coarse) >= errors(w, imp, qt)).all())
    assert not torch.equal(coarse.codes, qt.codes)


@pytest.mark.parametrize("name", ["q4_0", "q5_1", "q3_k", "q6_k", "q8_0"])
def test_ggml_types_take_llamacpp_s_weighted_quantizer(name) -> None:
    """A ggml type: the block bytes of llama.cpp's weighted quantizer for this importance (the
    numpy reference, not the C fast path the method uses); Q8_0 ignores the importance."""
    from lowbit import ggml

    w, imp = heavy((8, 256)), skewed(256)
    qt = get_method("rtn-imatrix").quantize_weight(w, name, LayerStats(n_tokens=4, x2_mean=imp),
                                                   name="w")
    want = ggml.quantize(w.numpy(), Scheme.parse(name).ggml_type, importance=imp.numpy(),
                         impl="reference")
    assert np.array_equal(qt.codes.numpy(), want)
    plain = quantize_rtn(w, name).codes
    assert torch.equal(qt.codes, plain) == (name == "q8_0")
    with pytest.raises(ValueError, match="w: importance has 128 values"):
        get_method("rtn-imatrix").quantize_weight(
            w, name, LayerStats(n_tokens=4, x2_mean=imp[:128]), name="w")
