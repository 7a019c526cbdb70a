"""Bootstrap intervals of a per-group rate, vectorized.

fairlearn's ``MetricFrame(n_boot=...)`` recomputes a pandas group-by for every bootstrap sample, which made the
audit of a 266-row quickstart spend 23 s in four calls. The interval is the same statistic computed with numpy:
each bootstrap sample draws ``n`` rows with replacement from all rows (as fairlearn does), and the rate of each
group is the mean of ``y`` over that group's rows in the sample; the interval is the 2.5% and 97.5% quantiles over
samples (samples where a group drew no row are left out of its quantiles).

Worked example: ``y = [1, 1, 1, 1]`` for one group gives rate 1.0 in every sample, so the interval is
``[1.0, 1.0]``; a group whose ``y`` is always 0 gets ``[0.0, 0.0]``.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 32
"""Bootstrap samples drawn at once (bounds memory to ``_CHUNK * n`` indices)."""


def group_rate_ci(y: np.ndarray, groups: np.ndarray, n_boot: int = 200, seed: int = 0,
                  quantiles: tuple[float, float] = (0.025, 0.975)) -> dict[str, tuple[float, float]]:
    """``{group: (low, high)}``: the bootstrap interval of the mean of ``y`` per group."""
    names, inverse = np.unique(groups, return_inverse=True)
    n, k = inverse.size, names.size
    if n == 0 or n_boot <= 0:
        return {}
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rates = np.empty((n_boot, k))
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        rows = rng.integers(0, n, size=(b, n))
        cell = (np.arange(b)[:, None] * k + inverse[rows]).ravel()  # (sample, group) -> one bin
        counts = np.bincount(cell, minlength=b * k).reshape(b, k)
        sums = np.bincount(cell, weights=y[rows].ravel(), minlength=b * k).reshape(b, k)
        with np.errstate(invalid="ignore", divide="ignore"):
            rates[start : start + b] = sums / counts
    low, high = np.nanquantile(rates, quantiles, axis=0)
    return {str(name): (float(lo), float(hi)) for name, lo, hi in zip(names, low, high, strict=True)}
