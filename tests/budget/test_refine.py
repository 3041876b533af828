"""The second measured pass: swaps within the budget, the plan's measured KL, weights restored."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.budget.kl import KLReference
from lowbit.budget.plan import budget_plan, choice_of
from lowbit.budget.refine import candidate_swaps, refine_plan
from lowbit.budget.sensitivity import measure_sensitivity
from lowbit.calibration import Calibration
from tests.test_embeddings import _tied_llama

CANDIDATES = ["q8_0", "q4_0", "int4-asym-g32", "int2-asym-g32"]


@pytest.fixture
def setup(tiny_tokenizer, lowbit_cache):
    model = _tied_llama(tiny_tokenizer)
    g = torch.Generator().manual_seed(3)
    cal = Calibration(tokens=torch.randint(0, 250, (2, 24), generator=g), batch_size=2)
    sens = measure_sensitivity(model, cal, CANDIDATES, progress=False, anchors=None)
    return model, cal, sens


def test_swaps_fit_the_slack_and_come_most_promising_first(setup) -> None:
    _, _, sens = setup
    choice = {u: sorted(n, key=n.get)[1] for u, n in sens.nbytes.items()}
    for slack in (0, 500):
        swaps = candidate_swaps(sens, choice, slack, 50)
        assert swaps and [p for p, _ in swaps] == sorted(p for p, _ in swaps)
        for predicted, swap in swaps:
            assert len(swap) == 2
            extra = sum(sens.nbytes[u][s] - sens.nbytes[u][choice[u]] for u, s in swap.items())
            assert extra <= slack
            assert predicted == pytest.approx(sum(sens.kl[u][s] - sens.kl[u][choice[u]]
                                                  for u, s in swap.items()))


def test_refined_plan_keeps_its_budget_and_measures_the_plans_kl(setup) -> None:
    model, cal, sens = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = budget_plan(model, sens, target_bpw=5.5)
    refined = refine_plan(model, cal, sens, plan, swaps=6, rounds=2, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the float weights are back
    r = refined.details["refine"]
    assert r["tried"] >= 1 and r["final_kl"] <= r["measured_kl"]
    assert refined.details["predicted_bytes"] <= plan.details["budget_bytes"]
    assert len(r["applied"]) <= 2
    # the measured KL is the KL of the model quantized with the plan (float tensors kept fp32;
    # the kernels differ from weight replacement only in float32 summation order)
    with torch.no_grad():
        ref = KLReference([model(b).logits.reshape(-1, model.config.vocab_size)
                           for b in cal.batches()])
        q = copy.deepcopy(model)
        lowbit.quantize(q, plan, keep_dtype=torch.float32, progress=False)
        kl = ref.mean([q(b).logits.reshape(-1, model.config.vocab_size)
                       for b in cal.batches()])[0]
    assert r["measured_kl"] == pytest.approx(kl, rel=1e-3)
    if r["applied"]:
        assert choice_of(refined, sens) != choice_of(plan, sens)
        assert r["final_kl"] < r["measured_kl"]


def test_cli_refines_and_marks_placed_values(tiny_hf_dir, tmp_path, capsys,
                                             lowbit_cache) -> None:
    from lowbit.cli import main

    out = tmp_path / "ck"
    code = main(["quantize", str(tiny_hf_dir), "--target-bpw", "6", "--candidates",
                 "q8_0,q4_0,int2-asym-g32", "-o", str(out), "--calibration-text",
                 "sotu-1980-1999.txt", "--refine-swaps", "3", "--sensitivity-report",
                 str(tmp_path / "sens")])
    text = capsys.readouterr().out
    assert code == 0 and "refine           measured plan KL" in text
    assert "placed by the proxy" in text
    table = (tmp_path / "sens.md").read_text()
    assert "~" in table and "*" in table
