"""Percentile bootstrap confidence interval of a mean."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_mean_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                      chunk: int = 500) -> Interval:
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
