"""Bootstrap interval sanity against exact enumeration and known cases."""

import itertools
import math

import numpy as np
import pytest

from decontext.metrics.bootstrap import bootstrap_mean_ci


def test_matches_exact_bootstrap_distribution_of_small_sample():
    data = np.array([0.0, 1.0, 5.0])
    # every one of the 3^3 equally likely resamples, enumerated
    means = np.sort([np.mean(c) for c in itertools.product(data, repeat=3)])
    # exact quantiles of that discrete distribution (inverse CDF)
    exact_low, exact_high = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
    ci = bootstrap_mean_ci(data, n_boot=40000, seed=1)
    assert ci.mean == pytest.approx(2.0)
    assert ci.n == 3
    assert ci.low == pytest.approx(exact_low) and ci.high == pytest.approx(exact_high)
    # a sample whose 2.5% / 97.5% points fall inside the distribution, not on its ends
    data = np.array([0.0, 1.0, 2.0, 7.0, 3.0, 4.0])
    means = np.sort([np.mean(c) for c in itertools.product(data, repeat=6)])
    exact_low, exact_high = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
    ci = bootstrap_mean_ci(data, n_boot=40000, seed=2)
    step = 1 / 6  # resample means lie on a grid of 1/6
    assert abs(ci.low - exact_low) <= step + 1e-9 and abs(ci.high - exact_high) <= step + 1e-9
    assert ci.low <= ci.mean <= ci.high


def test_normal_sample_interval_close_to_textbook():
    rng = np.random.default_rng(0)
    x = rng.normal(10.0, 2.0, size=400)
    ci = bootstrap_mean_ci(x, n_boot=4000, seed=0)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert ci.low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_degenerate_cases_and_nan_dropped():
    assert bootstrap_mean_ci([]).as_dict() == {"mean": None, "low": None, "high": None, "n": 0}
    assert bootstrap_mean_ci([float("nan")]).n == 0
    one = bootstrap_mean_ci([3.5])
    assert (one.mean, one.low, one.high, one.n) == (3.5, 3.5, 3.5, 1)
    const = bootstrap_mean_ci([0.25] * 10)
    assert const.low == const.high == 0.25
    with_nan = bootstrap_mean_ci([1.0, float("nan"), 3.0, float("inf")])
    assert with_nan.n == 2 and with_nan.mean == 2.0


def test_reproducible_with_seed():
    x = np.arange(20.0)
    assert bootstrap_mean_ci(x, seed=7) == bootstrap_mean_ci(x, seed=7)
