"""The report's statistics: mean ± 95% confidence interval over runs, and a run's value at a given KL.

    mean_ci([0.72, 0.73, 0.70])              # Estimate(mean=0.7167, half_width=0.0380, n=3)
    value_at(kl, refusal, level=1.0)         # the run's refusal where its KL first reaches 1 nat
    grid_estimates(runs, grid)               # mean ± CI across runs at each grid point

Intervals are Student t: mean ± t(0.975, n−1)·s/√n. scipy is not a dependency, so t comes from a table
of exact quantiles for n−1 = 1..30 and the Cornish–Fisher expansion beyond (within 5e-4 of the exact
value from 30 degrees of freedom on). One run gives a mean and no interval, never a ± 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# t(0.975, df) for df = 1..30 (two-sided 95%), to 4 decimals, from the standard tables.
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959964  # the normal quantile, t's limit as df → ∞


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the multiplier of s/√n in a two-sided 95% interval with df = n − 1."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    # Cornish–Fisher expansion of t in powers of 1/df around the normal quantile (Abramowitz & Stegun
    # 26.7.5); its first three terms are exact to 4 decimals for df > 30.
    z = Z_975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Estimate:
    """A mean over n runs and the half-width of its 95% interval (NaN for n < 2: no interval)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values) -> Estimate:
    """Mean and 95% t-interval of the non-NaN `values`; n = 0 gives NaN mean, n = 1 a NaN half-width."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(x[0]), math.nan, 1)
    return Estimate(float(x.mean()), t_quantile_975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n)


def value_at(x, y, level: float) -> float:
    """A run's y where its x (KL, or task score) first reaches `level`, linearly interpolated; NaN if the
    run starts above `level` or never reaches it.

    The x recorded along a fine-tune is an estimate from a few sampled prompts and can dip after rising,
    so the run is read against its running maximum (the most it has reached so far): monotone in the step,
    and its first crossing of `level` is the first crossing of the raw x. Between the two recorded points
    around the crossing, y is interpolated linearly in that running maximum.
    """
    x = np.maximum.accumulate(np.asarray(x, dtype=float))
    y = np.asarray(y, dtype=float)
    if len(x) == 0 or level < x[0] or level > x[-1]:
        return math.nan
    i = int(np.argmax(x >= level))  # the first point at or past the level
    if i == 0 or x[i] == level:
        return float(y[i])
    x0, x1 = x[i - 1], x[i]
    return float(y[i - 1] + (y[i] - y[i - 1]) * (level - x0) / (x1 - x0))


def grid_estimates(runs: list[tuple], grid) -> list[Estimate]:
    """Mean ± 95% CI across runs at each grid level, each run given as (x, y) along its fine-tune.

    A level fewer than two runs reach gets Estimate(NaN, NaN, n): a mean over the few runs that drift
    furthest is not comparable with a mean over all of them. A lone run (a study with one seed) is its
    own estimate wherever it reaches.
    """
    needed = min(2, len(runs))
    out = []
    for level in grid:
        values = [value_at(x, y, level) for x, y in runs]
        est = mean_ci(values)
        out.append(est if est.n >= max(needed, 1) else Estimate(math.nan, math.nan, est.n))
    return out
