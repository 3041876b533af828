"""lowbit's LLM.int8 against bitsandbytes' ``Linear8bitLt`` (skipped where bitsandbytes does not
run). Stated tolerance: on bitsandbytes' own int8 weight, lowbit's decomposition is within
bitsandbytes' own error against the float layer (the two differ by design: bitsandbytes casts
activations to fp16 and takes each token's scale with only the outlier elements zeroed, lowbit
with the outlier columns left out), the outlier features are the same, and with every feature
an outlier both are the float matmul of the same weight (1e-6)."""

from __future__ import annotations

import pytest
import torch

from tests.activations.bnb_reference import bnb_runs, compare_one

pytestmark = pytest.mark.skipif(not bnb_runs(), reason="bitsandbytes' Linear8bitLt does not "
                                "run here")


def problem(tokens: int, seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(256, 96)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(96, 256, generator=g) * 0.05)
        linear.bias.copy_(torch.randn(96, generator=g) * 0.1)
    x = torch.randn(tokens, 256, generator=g)
    x[:, [7, 100, 201]] *= 10.0  # LLM-style outlier features
    return linear, x


@pytest.mark.parametrize("tokens", [1, 64])
def test_llm_int8_matches_bitsandbytes(tokens: int) -> None:
    r = compare_one(*problem(tokens), threshold=6.0)
    assert r["outliers_lowbit"] == r["outliers_bnb"] > 0
    assert r["same_weight_vs_bnb"] <= r["bnb_vs_float"]
    # each is an int8 approximation of the float layer of the same quality
    assert r["lowbit_vs_float"] < 0.02 and r["bnb_vs_float"] < 0.02
    assert r["lowbit_vs_bnb"] < 2 * max(r["lowbit_vs_float"], r["bnb_vs_float"])
    assert r["fast_vs_reference"] < 1e-6


def test_every_feature_an_outlier() -> None:
    linear, x = problem(16)
    r = compare_one(linear, x, threshold=1e-4)
    assert r["outliers_lowbit"] == r["outliers_bnb"] == 256
    assert r["same_weight_vs_bnb"] < 1e-6
