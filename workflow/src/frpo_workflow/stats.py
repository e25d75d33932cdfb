"""The report's statistics: mean ± 95% confidence interval over seeds, a difference of two such means,
and a run's value at a given KL.

    mean_ci([0.72, 0.73, 0.70])              # Estimate(mean=0.7167, half_width=0.0380, n=3)
    mean_ci(values, units=[0, 0, 1, 1])      # runs of one alignment seed averaged first: n = 2 seeds
    diff_ci(frpo_values, grpo_values)        # FRPO − GRPO, Welch interval
    value_at(kl, refusal, level=1.0)         # the run's refusal where its KL first reaches 1 nat
    grid_estimates(runs, grid, units)        # mean ± CI across seeds at each grid point

Intervals are Student t: mean ± t(0.975, n−1)·s/√n. scipy is not a dependency, so t comes from a table
of exact quantiles for n−1 = 1..30 and the Cornish–Fisher expansion beyond (within 5e-4 of the exact
value from 30 degrees of freedom on). One value gives a mean and no interval, never a ± 0.

Units: the downstream runs of one aligned model share its alignment seed, so they are not independent
draws of "a method's alignment, then a fine-tune". Where `units` names each value's alignment seed, the
values of a seed are averaged first and the interval is over seeds: it covers both stages' randomness
without counting one aligned model's fine-tunes as separate evidence about the method.
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


def unit_means(values, units=None) -> np.ndarray:
    """The non-NaN `values`, or with `units` (one label per value) the mean of each unit's non-NaN values,
    units with none left out, in the order the units first appear."""
    x = np.asarray(list(values), dtype=float)
    if units is None:
        return x[~np.isnan(x)]
    labels = list(units)
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} unit labels for {len(x)} values")
    groups: dict = {}
    for label, value in zip(labels, x):
        if not math.isnan(value):
            groups.setdefault(label, []).append(value)
    return np.array([np.mean(v) for v in groups.values()], dtype=float)


def mean_ci(values, units=None) -> Estimate:
    """Mean and 95% t-interval of the non-NaN `values` (over units, see `unit_means`, where given); n = 0
    gives NaN mean, n = 1 a NaN half-width."""
    x = unit_means(values, units)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(x[0]), math.nan, 1)
    return Estimate(float(x.mean()), t_quantile_975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n)


def diff_ci(a, b, units_a=None, units_b=None) -> Estimate:
    """mean(a) − mean(b) with a Welch 95% interval (unequal variances; t at the Welch–Satterthwaite degrees
    of freedom, rounded down: conservative), each side over its units. n is the smaller side's count; an
    interval needs two values on each side."""
    x, y = unit_means(a, units_a), unit_means(b, units_b)
    n = min(len(x), len(y))
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    diff = float(x.mean() - y.mean())
    if n < 2:
        return Estimate(diff, math.nan, n)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if va + vb == 0:
        return Estimate(diff, 0.0, n)
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    return Estimate(diff, t_quantile_975(max(1, int(df))) * math.sqrt(va + vb), n)


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


def grid_values(runs: list[tuple], grid) -> list[list[float]]:
    """Per grid level, each run's y where its x first reaches the level (`value_at`; NaN if it never does)."""
    return [[value_at(x, y, level) for x, y in runs] for level in grid]


def unit_count(n_values: int, units=None) -> int:
    """How many units `n_values` values fall in: distinct `units` labels where given, else the values."""
    return n_values if units is None else len(set(units))


def level_estimates(values_per_level: list[list[float]], units=None) -> list[Estimate]:
    """Mean ± 95% CI at each level from the runs' values there (`grid_values`), over `units` where given.

    A level fewer than two units reach gets Estimate(NaN, NaN, n): a mean over the few runs that drift
    furthest is not comparable with a mean over all of them. A lone unit (a study with one seed) is its
    own estimate wherever it reaches.
    """
    out = []
    for values in values_per_level:
        needed = min(2, unit_count(len(values), units))
        est = mean_ci(values, units)
        out.append(est if est.n >= max(needed, 1) else Estimate(math.nan, math.nan, est.n))
    return out


def grid_estimates(runs: list[tuple], grid, units=None) -> list[Estimate]:
    """Mean ± 95% CI at each grid level, each run given as (x, y) along its fine-tune; over `units` (each
    run's alignment seed) where given, else over runs (`level_estimates`)."""
    return level_estimates(grid_values(runs, grid), units)
