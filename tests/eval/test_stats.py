import math

import pytest

from lowbit.eval.stats import RunningMean, wilson_interval


# Newcombe R.G. (1998), "Two-sided confidence intervals for the single proportion: comparison of
# seven methods", Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity
# correction), 95%. The paper prints 4 decimals, hence abs=5e-5.
@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
     (1, 29, 0.0061, 0.1718)],
)
def test_wilson_published_values(x, n, low, high):
    lo, hi = wilson_interval(x, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_wilson_extremes_and_symmetry():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(3, 10)
    lo2, hi2 = wilson_interval(7, 10)
    assert lo == pytest.approx(1 - hi2, abs=1e-12)  # x/n and (n-x)/n mirror; 1e-12: rounding only
    assert hi == pytest.approx(1 - lo2, abs=1e-12)


@pytest.mark.parametrize(("x", "n"), [(1, 0), (-1, 5), (6, 5)])
def test_wilson_rejects_bad_input(x, n):
    with pytest.raises(ValueError, match="wilson_interval"):
        wilson_interval(x, n)


def test_running_mean_matches_direct():
    values = [0.5, 2.0, 3.25, 7.0, 1.5]
    acc = RunningMean()
    acc.add(sum(values[:2]), sum(v * v for v in values[:2]), 2)
    acc.add(sum(values[2:]), sum(v * v for v in values[2:]), 3)
    mean = sum(values) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    assert acc.mean == pytest.approx(mean, rel=1e-12)  # float64 sums of 5 values: rounding only
    assert acc.stderr == pytest.approx(sd / math.sqrt(5), rel=1e-9)
