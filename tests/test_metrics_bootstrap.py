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


# -- the cluster (identity) bootstrap and the paired difference --------------------------------------


def _exact_cluster_quantiles(cluster_means, level=0.95):
    """Every equally likely resample of the clusters, enumerated: the exact bootstrap distribution."""
    k = len(cluster_means)
    means = [np.mean(c) for c in itertools.product(cluster_means, repeat=k)]
    alpha = (1 - level) / 2
    return np.quantile(means, [alpha, 1 - alpha], method="inverted_cdf")


def test_cluster_bootstrap_resamples_clusters_not_items():
    from decontext.metrics.bootstrap import cluster_bootstrap_ci

    # identity A has two items, B one, C three (one of them NaN, dropped): cluster means 0.5, 3, 8
    values = [0.0, 1.0, 3.0, 5.0, float("nan"), 11.0]
    clusters = ["A", "A", "B", "C", "C", "C"]
    ci = cluster_bootstrap_ci(values, clusters, n_boot=40000, seed=3)
    assert ci.mean == pytest.approx((0.5 + 3.0 + 8.0) / 3)  # each identity weighs the same, not each item
    assert ci.mean != pytest.approx(np.nanmean(values))
    assert (ci.n, ci.items) == (3, 5)
    low, high = _exact_cluster_quantiles([0.5, 3.0, 8.0])
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))
    assert ci.as_dict()["items"] == 5
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_bootstrap_ci([1.0, 2.0], ["A"])


def _rows(condition, rng, identities=5, images_per_identity=2, prompts=(0, 3, 7), seeds=(1, 2), shift=0.0):
    rows = []
    for i in range(identities):
        for j in range(images_per_identity):
            for p in prompts:
                for s in seeds:
                    rows.append(
                        {
                            "condition": condition,
                            "image": f"id{i}_{j}",
                            "identity": f"id{i}",
                            "prompt_index": p,
                            "seed": s,
                            "toy_identity": float(rng.uniform(0.5, 1.0) - shift * (i % 3)),
                        }
                    )
    return rows


def _brute_force_paired(cond_rows, ref_rows, metric):
    """The definition, written as plainly as possible: match every row by scanning, keep finite pairs,
    average the differences per identity, then enumerate every resample of the identities."""
    per_identity: dict[str, list[float]] = {}
    a_of: dict[str, list[float]] = {}
    b_of: dict[str, list[float]] = {}
    for row in cond_rows:
        for other in ref_rows:
            if (row["image"], row["prompt_index"], row["seed"]) == (
                other["image"],
                other["prompt_index"],
                other["seed"],
            ):
                a, b = row.get(metric), other.get(metric)
                if isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
                    per_identity.setdefault(row["identity"], []).append(a - b)
                    a_of.setdefault(row["identity"], []).append(a)
                    b_of.setdefault(row["identity"], []).append(b)
    means = [np.mean(v) for v in per_identity.values()]
    low, high = _exact_cluster_quantiles(means)
    return {
        "mean": np.mean(means),
        "low": low,
        "high": high,
        "identities": len(means),
        "pairs": sum(len(v) for v in per_identity.values()),
        "a": np.mean([np.mean(v) for v in a_of.values()]),
        "b": np.mean([np.mean(v) for v in b_of.values()]),
    }


def test_paired_difference_matches_brute_force_reference():
    from decontext.metrics.bootstrap import paired_difference_ci

    rng = np.random.default_rng(0)
    clean = _rows("clean", rng)
    protected = _rows("protected", rng, shift=0.1)
    # things that must not count: an edit with no clean partner, a NaN value, a missing value
    protected.append({**protected[0], "seed": 99})
    protected[1]["toy_identity"] = float("nan")
    del clean[2]["toy_identity"]
    ref = _brute_force_paired(protected, clean, "toy_identity")
    assert ref["pairs"] == 5 * 2 * 3 * 2 - 2 and ref["identities"] == 5

    got = paired_difference_ci(protected, clean, "toy_identity", n_boot=40000, seed=5)
    assert got.diff.mean == pytest.approx(ref["mean"])
    assert (got.diff.n, got.diff.items) == (ref["identities"], ref["pairs"])
    assert got.condition_mean == pytest.approx(ref["a"]) and got.reference_mean == pytest.approx(ref["b"])
    assert got.condition_mean - got.reference_mean == pytest.approx(got.diff.mean)
    # 5^5 resamples with distinct means: the Monte Carlo percentiles land next to the exact ones
    spread = ref["high"] - ref["low"]
    assert abs(got.diff.low - ref["low"]) < 0.03 * spread and abs(got.diff.high - ref["high"]) < 0.03 * spread

    # row order does not matter, and the seed makes it reproducible
    shuffled = paired_difference_ci(list(reversed(protected)), clean[::-1], "toy_identity", n_boot=40000, seed=5)
    assert shuffled == got
    assert paired_difference_ci(protected, clean, "toy_identity", n_boot=500, seed=1) == paired_difference_ci(
        protected, clean, "toy_identity", n_boot=500, seed=1
    )


def test_paired_difference_without_pairs_is_empty():
    from decontext.metrics.bootstrap import paired_difference_ci

    rows = _rows("a", np.random.default_rng(1), identities=1)
    out = paired_difference_ci(rows, [{**r, "toy_identity": None} for r in rows], "toy_identity")
    assert (out.condition_mean, out.reference_mean, out.diff.mean, out.diff.n, out.diff.items) == (
        None,
        None,
        None,
        0,
        0,
    )


def test_the_edits_by_identity_interval_resamples_the_columns_of_an_edits_by_identities_array():
    """The benchmark's and the bench scripts' one interval: column j holds identity j's edits; the mean is the mean
    of the per-identity means (NaN edits dropped within their identity), the interval the textbook bootstrap of
    those means drawn with the seed; nothing finite gives no number, a 1-D array an error."""
    from decontext.metrics.bootstrap import edits_by_identity_ci

    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, (6, 11))
    values[2, 4] = np.nan  # one edit of identity 4 with no score
    per_identity = np.array([np.nanmean(values[:, j]) for j in range(11)])
    ci = edits_by_identity_ci(values, n_boot=3000, seed=5)
    assert (ci.n, ci.items) == (11, 65)
    assert ci.mean == pytest.approx(per_identity.mean())
    draws = per_identity[np.random.default_rng(5).integers(0, 11, (3000, 11))].mean(1)
    assert (ci.low, ci.high) == (pytest.approx(np.quantile(draws, 0.025)), pytest.approx(np.quantile(draws, 0.975)))
    assert edits_by_identity_ci(np.full((3, 4), np.nan)).mean is None
    with pytest.raises(ValueError, match="edits, identities"):
        edits_by_identity_ci(np.zeros(5))
