"""Calibration statistics against statistics computed by hand from the same activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.calibration import LayerStats, StatsAccumulator, collect_stats
from tests.calibration.helpers import ALL_STATS, assert_stats_match, hand_stats


def test_accumulator_matches_hand_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    # batches of different sizes and scales, some leading dims, one empty
    batches = [torch.randn(3, 7, 24, generator=g) * 3, torch.randn(5, 24, generator=g),
               torch.zeros(0, 24), torch.randn(2, 1, 24, generator=g) * 0.01]
    acc = StatsAccumulator(24, ALL_STATS)
    for x in batches:
        acc.add(x)
    assert_stats_match(acc.result(), hand_stats(batches), updates=3)


def test_only_the_needed_statistics_are_kept() -> None:
    acc = StatsAccumulator(8, {"x2_mean"})
    acc.add(torch.ones(4, 8))
    stats = acc.result()
    assert stats.hessian is None and stats.act_max is None
    assert torch.equal(stats.x2_mean, torch.ones(8, dtype=torch.float64))
    assert stats.missing({"x2_mean", "hessian"}) == {"hessian"}


def test_accumulator_errors() -> None:
    acc = StatsAccumulator(8, ALL_STATS)
    with pytest.raises(ValueError, match="no calibration tokens"):
        acc.result()
    with pytest.raises(ValueError, match="5 features, the layer 8"):
        acc.add(torch.ones(2, 5))


def test_collect_stats_hooks_and_unhooks() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    xs = [torch.randn(10, 16), torch.randn(6, 16)]
    with collect_stats({"0": net[0], "2": net[2]}, ALL_STATS) as accs, torch.no_grad():
        for x in xs:
            net(x)
    assert not net[0]._forward_hooks and not net[2]._forward_hooks
    with torch.no_grad():
        hidden = [torch.relu(net[0](x)) for x in xs]
    assert_stats_match(accs["0"].result(), hand_stats(xs), updates=2)
    assert_stats_match(accs["2"].result(), hand_stats(hidden), updates=2)


def test_layer_stats_is_a_plain_record() -> None:
    s = LayerStats(n_tokens=3)
    assert s.missing(ALL_STATS) == set(ALL_STATS)
