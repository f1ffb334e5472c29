"""Percentile bootstrap confidence intervals: of a mean, of a mean over clusters (identities), and of a
paired difference between two conditions of a run (the headline comparison of report.html)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


@dataclass(frozen=True)
class ClusterInterval(Interval):
    """An interval whose resampling unit is a cluster: ``n`` clusters (identities) holding ``items``
    values (pairs)."""

    items: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {**super().as_dict(), "items": self.items}


@dataclass(frozen=True)
class PairedDifference:
    """``condition - reference`` on one metric, over the items both have (see ``paired_difference_ci``).

    ``condition_mean`` and ``reference_mean`` are taken the same way as the difference (mean of the
    per-identity means over the paired items), so ``condition_mean - reference_mean == diff.mean``."""

    condition_mean: float | None
    reference_mean: float | None
    diff: ClusterInterval

    def as_dict(self) -> dict:
        return {
            "condition_mean": self.condition_mean,
            "reference_mean": self.reference_mean,
            "diff": self.diff.as_dict(),
        }


def bootstrap_mean_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0, chunk: int = 500) -> Interval:
    """Mean of the finite values and its percentile-bootstrap interval.

    NaN/inf entries are dropped first (a metric undefined for an item does not count); ``n`` is the
    number kept. n == 0 gives all-None; n == 1 gives a zero-width interval at the value.
    Resamples are drawn with a fixed seed, so the result is reproducible.
    """
    v = np.asarray(list(values), dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return Interval(None, None, None, 0)
    mean = float(v.mean())
    if n == 1 or np.all(v == v[0]):
        return Interval(mean, mean, mean, n)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(mean, float(low), float(high), n)


def cluster_means(values, clusters: Sequence[Hashable]) -> np.ndarray:
    """The mean of the finite values of each cluster, in sorted label order (clusters left with no finite
    value are dropped). Sorted labels and exactly rounded sums make the result, and so the seeded
    resamples drawn from it, independent of the order the items come in."""
    v = np.asarray(list(values), dtype=np.float64).ravel()
    labels = list(clusters)
    if len(labels) != v.size:
        raise ValueError(f"{v.size} values but {len(labels)} cluster labels")
    groups: dict[Hashable, list[float]] = {}
    for label, value in zip(labels, v, strict=False):
        if np.isfinite(value):
            groups.setdefault(label, []).append(float(value))
    return np.array([math.fsum(groups[k]) / len(groups[k]) for k in sorted(groups)], dtype=np.float64)


def cluster_bootstrap_ci(
    values, clusters: Sequence[Hashable], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> ClusterInterval:
    """Mean over clusters of the per-cluster mean, with a bootstrap interval that resamples CLUSTERS
    (labels: identities, of one sortable type).

    The edits of one identity are not independent (same face, same perturbation), so resampling edits
    would understate the uncertainty; resampling whole identities does not. Every identity weighs the
    same however many of its items are finite. Non-finite values are dropped; ``items`` counts the rest.
    """
    v = np.asarray(list(values), dtype=np.float64).ravel()
    per_cluster = cluster_means(v, clusters)
    ci = bootstrap_mean_ci(per_cluster, level=level, n_boot=n_boot, seed=seed)
    return ClusterInterval(ci.mean, ci.low, ci.high, ci.n, int(np.isfinite(v).sum()))


def edits_by_identity_ci(values, n_boot: int = 2000, seed: int = 0) -> ClusterInterval:
    """Mean of an (edits, identities) array (column j: the edits of identity j) with its 95% interval over
    identities: ``cluster_bootstrap_ci`` with the column as the cluster. The one interval of the benchmark's
    leaderboard and of the bench scripts. Non-finite values are dropped; none finite gives all-None."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"expected an (edits, identities) array, got shape {v.shape}")
    clusters = np.broadcast_to(np.arange(v.shape[1]), v.shape).ravel().tolist()
    return cluster_bootstrap_ci(v.ravel(), clusters, n_boot=n_boot, seed=seed)


def _finite(row: dict, metric: str) -> float | None:
    value = row.get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return None


PAIR_KEY = ("image", "prompt_index", "seed")  # the same edit of the same photo, in two conditions


def paired_difference_ci(
    condition_rows: Iterable[dict],
    reference_rows: Iterable[dict],
    metric: str,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """``metric`` of one condition minus that of a reference condition, paired edit by edit.

    Rows (``EvalResult.edit_rows``: dicts with image, identity, prompt_index, seed and metric columns)
    are paired by (image, prompt_index, seed); a pair counts when both have a finite value. The
    difference is averaged per identity, and its interval resamples identities
    (``cluster_bootstrap_ci``), seeded, so it is reproducible. Pairing removes the spread between
    photos and prompts that both conditions share, which is most of it.
    """
    reference = {tuple(r[k] for k in PAIR_KEY): r for r in reference_rows}
    a: list[float] = []
    b: list[float] = []
    identities: list[Hashable] = []
    for row in condition_rows:
        other = reference.get(tuple(row[k] for k in PAIR_KEY))
        if other is None:
            continue
        x, y = _finite(row, metric), _finite(other, metric)
        if x is None or y is None:
            continue
        a.append(x)
        b.append(y)
        identities.append(row["identity"])
    diff = cluster_bootstrap_ci(np.subtract(a, b), identities, level=level, n_boot=n_boot, seed=seed)
    if not a:
        return PairedDifference(None, None, diff)
    return PairedDifference(
        float(cluster_means(a, identities).mean()), float(cluster_means(b, identities).mean()), diff
    )
