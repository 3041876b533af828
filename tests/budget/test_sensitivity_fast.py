"""The fast parts of sensitivity: KL against cached float probabilities equals the evaluator's
KL; anchors and the proxy's placement; anchored measurement measures only its anchors."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.budget.kl import KLReference
from lowbit.budget.placement import choose_anchors, place
from lowbit.budget.proxy import rank_correlations
from lowbit.budget.sensitivity import measure_sensitivity
from lowbit.calibration import Calibration
from lowbit.eval.divergence import kl_rows
from tests.test_embeddings import _tied_llama

CANDIDATES = ["q8_0", "q4_0", "int4-asym-g32", "int2-asym-g32"]


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1.0, 5.0])
def test_kl_reference_equals_the_evaluators_kl(scale) -> None:
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(70, 300, generator=g) * 4, torch.randn(5, 300, generator=g) * 4]
    quant = [b + scale * torch.randn(b.shape, generator=g) for b in base]
    got = KLReference(base).per_token(quant)
    want = torch.cat([kl_rows(b, q)[0] for b, q in zip(base, quant, strict=True)])
    # the evaluator's two float64 log-softmaxes cancel: 1.2e-6 relative at KL ~1e-9 (scale
    # 1e-4) against a float64 evaluation of the formula; within 1e-5 relative of it
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-15)
    mean, se = KLReference(base).mean(quant)
    assert mean == pytest.approx(float(want.mean()), rel=1e-6) and se > 0


def test_kl_reference_is_zero_for_the_same_logits_and_checks_shapes() -> None:
    base = [torch.randn(4, 50)]
    assert float(KLReference(base).per_token(base).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="differ"):
        KLReference(base).per_token([torch.randn(4, 51)])


def test_anchors_sit_at_the_centres_of_equal_slices() -> None:
    names = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0"]
    assert choose_anchors(names, 1) == ["q4_k"]
    assert choose_anchors(names, 2) == ["q3_k", "q6_k"]
    assert choose_anchors(names, 3) == ["q2_k", "q4_k", "q6_k"]
    assert choose_anchors(names[:4], 1) == ["q3_k"]
    assert choose_anchors(names, None) == names == choose_anchors(names, 9)
    with pytest.raises(ValueError, match="anchors"):
        choose_anchors(names, 0)


def test_placement_is_exact_where_kl_follows_the_proxy() -> None:
    # KL = c * proxy**b: interpolation between anchors is exact for any b, and beyond them
    # exact for b = 1 (the small-error limit the module argues)
    proxy = {"a": 8.0, "b": 4.0, "c": 1.0, "d": 0.25, "e": 0.01}
    for b, beyond in ((1.0, True), (1.7, False)):
        kl = {s: 0.3 * p ** b for s, p in proxy.items()}
        got = place({"a": kl["a"], "c": kl["c"]}, proxy)
        assert got["a"] == kl["a"] and got["c"] == kl["c"]
        assert got["b"] == pytest.approx(kl["b"], rel=1e-12)
        if beyond:
            assert got["e"] == pytest.approx(kl["e"], rel=1e-12)
        else:
            assert got["e"] == pytest.approx(kl["c"] * 0.01, rel=1e-12)
    assert place({"a": 0.0}, {"a": 1.0, "b": 0.5}) == {"a": 0.0, "b": 0.0}


def test_rank_correlations_within_and_between_units() -> None:
    a = {"u": {"x": 1.0, "y": 2.0, "z": 3.0}, "v": {"x": 10.0, "y": 20.0, "z": 30.0},
         "w": {"x": 5.0, "y": 6.0, "z": 7.0}}
    same = rank_correlations(a, a)
    assert same["pairs"] == same["within_unit"] == same["between_units"] == pytest.approx(1.0)
    flipped = {u: {s: -v for s, v in per.items()} for u, per in a.items()}
    assert rank_correlations(a, flipped)["within_unit"] == pytest.approx(-1.0)
    assert same["n_pairs"] == 9


def test_anchored_sensitivity_measures_only_its_anchors(tiny_tokenizer, lowbit_cache) -> None:
    model = _tied_llama(tiny_tokenizer)
    g = torch.Generator().manual_seed(3)
    cal = Calibration(tokens=torch.randint(0, 250, (2, 24), generator=g), batch_size=2)
    sens = measure_sensitivity(model, cal, CANDIDATES, progress=False, anchors=2)
    assert sens.measured == 2 * len(sens.units)
    assert all(len(p) == len(CANDIDATES) - 2 for p in sens.placed.values())
    assert sens.pairs_measured() == 2 * len(sens.units)
    exact = measure_sensitivity(model, cal, CANDIDATES, progress=False, anchors=None)
    assert exact.measured == (len(CANDIDATES) - 2) * len(sens.units)  # anchors came cached
    for unit, per in sens.kl.items():
        assert set(per) == set(exact.kl[unit]) and sens.nbytes[unit] == exact.nbytes[unit]
        for s, v in per.items():
            assert math.isfinite(v) and v >= 0
            if s not in sens.placed[unit]:
                assert v == exact.kl[unit][s]
    again = measure_sensitivity(model, cal, CANDIDATES, progress=False, anchors=2)
    assert again.measured == 0 and again.kl == exact.kl  # every pair now measured, none placed
