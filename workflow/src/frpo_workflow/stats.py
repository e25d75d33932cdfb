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

    A level has an estimate only where every run reaches it (no NaN value): a mean over the runs that drift
    furthest is not comparable with a mean over all of them (survivorship), and with a seed missing the
    interval would rest on fewer units than the study has. Elsewhere Estimate(NaN, NaN, n), n the units
    with a value there. A lone run is its own estimate wherever it reaches.
    """
    out = []
    for values in values_per_level:
        est = mean_ci(values, units)
        every = len(values) > 0 and not any(math.isnan(float(v)) for v in values)
        out.append(est if every else Estimate(math.nan, math.nan, est.n))
    return out


def grid_estimates(runs: list[tuple], grid, units=None) -> list[Estimate]:
    """Mean ± 95% CI at each grid level, each run given as (x, y) along its fine-tune; over `units` (each
    run's alignment seed) where given, else over runs (`level_estimates`)."""
    return level_estimates(grid_values(runs, grid), units)


# ---- paired comparisons, p-values, multiplicity, power (issue 23) ------------------------------------
# Arms aligned with the same seed share every random choice but the method (prompt order, the generation
# stream's seed, the downstream data order), so a comparison of two arms is over per-seed differences:
# `paired_test` (paired t: interval, p, effect size). `holm` adjusts a pre-registered family of p-values,
# `auc` is the primary endpoint's per-run reading (the mean of a metric over KL 0..upper), and
# `paired_t_power` / `paired_t_n` size a study from a measured seed-to-seed SD. Pure Python and numpy:
# t's CDF from the regularised incomplete beta function, the noncentral t by quadrature.


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t)."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T ≤ t) = p (bisection on `t_cdf`, to 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison over n units (alignment seeds) present on both sides: the mean difference, the
    half-width of its 95% t interval, the SD of the differences, t, its degrees of freedom, the two-sided
    p-value and the standardised effect dz = mean / SD. NaN where n is too small (n < 2: no SD; SD 0:
    no t, and no p)."""

    mean: float
    half_width: float
    n: int
    sd: float
    t: float
    df: int
    p: float

    @property
    def dz(self) -> float:
        return self.mean / self.sd if self.sd > 0 else math.nan

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.mean, self.half_width, self.n)


def pair_up(a: dict, b: dict) -> tuple[list, np.ndarray, np.ndarray]:
    """(units, a values, b values) for the units with a non-NaN value on both sides, in a's order."""
    units = [u for u, v in a.items() if u in b and not math.isnan(float(v)) and not math.isnan(float(b[u]))]
    return units, np.array([float(a[u]) for u in units]), np.array([float(b[u]) for u in units])


def paired_test(a: dict, b: dict) -> PairedTest:
    """Paired t comparison of a − b over the units both have (`a`, `b`: unit -> value, e.g. alignment seed
    -> the seed's endpoint). The interval is mean ± t(0.975, n−1)·SD/√n of the per-unit differences."""
    _, x, y = pair_up(a, b)
    d = x - y
    n = len(d)
    if n == 0:
        return PairedTest(math.nan, math.nan, 0, math.nan, math.nan, 0, math.nan)
    mean = float(d.mean())
    if n == 1:
        return PairedTest(mean, math.nan, 1, math.nan, math.nan, 0, math.nan)
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # every seed gives the same difference (to rounding): no test
        return PairedTest(mean, 0.0, n, 0.0, math.nan, n - 1, math.nan)
    t = mean / (sd / math.sqrt(n))
    return PairedTest(mean, t_quantile_975(n - 1) * sd / math.sqrt(n), n, sd, t, n - 1, t_two_sided_p(t, n - 1))


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order out). A NaN p (a test that could not
    be computed) stays NaN but still counts in the family's size m: the family is what was pre-registered."""
    p = [float(v) for v in pvalues]
    m = len(p)
    order = sorted(range(m), key=lambda i: (math.isnan(p[i]), p[i]))
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        if math.isnan(p[i]):
            continue
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def auc(x, y, upper: float) -> float:
    """The mean of y over x in [0, upper] along a run (the primary endpoint: sampled refusal averaged over
    KL to the aligned model from 0 to `upper` nats): the trapezoid area under y against the running maximum
    of x (as `value_at` reads a run), cut at `upper` by linear interpolation, divided by `upper`. A run that
    starts above 0 holds its first value from 0. NaN where the run never reaches `upper` (no reading past
    where it stopped: the caller integrates every arm of a seed to a KL they all reach) or a y on the way
    is NaN."""
    if not upper > 0:
        raise ValueError(f"auc: upper must be > 0, got {upper}")
    x = np.maximum.accumulate(np.asarray(x, dtype=float))
    y = np.asarray(y, dtype=float)
    if len(x) == 0 or x[-1] < upper or x[0] > upper:
        return math.nan
    i = int(np.argmax(x >= upper))
    xs, ys = list(x[: i + 1]), list(y[: i + 1])
    xs[-1], ys[-1] = upper, value_at(x, y, upper)
    if xs[0] > 0:
        xs.insert(0, 0.0)
        ys.insert(0, ys[0])
    if any(math.isnan(v) for v in ys):
        return math.nan
    xs, ys = np.array(xs), np.array(ys)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / upper)


def paired_t_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t test at level `alpha` over n pairs, for a true standardised effect
    `effect` = δ / σ_d (mean difference over the SD of the differences): P(|T| > t(1 − α/2, n − 1)) with
    T noncentral t (df n − 1, noncentrality effect·√n), by quadrature over the chi distribution of the SD."""
    if n < 2:
        raise ValueError(f"a paired t test needs n >= 2, got {n}")
    df = n - 1
    crit = t_quantile(1.0 - alpha / 2.0, df)
    ncp = effect * math.sqrt(n)
    # s = sqrt(V / df), V ~ chi²(df): density 2 (df/2)^(df/2) s^(df−1) exp(−df s²/2) / Γ(df/2).
    s = np.linspace(1e-9, 1.0 + 12.0 / math.sqrt(df), 20_001)
    log_density = (math.log(2.0) + (df / 2.0) * math.log(df / 2.0) - math.lgamma(df / 2.0)
                   + (df - 1) * np.log(s) - df * s * s / 2.0)
    density = np.exp(log_density)
    erfc = np.vectorize(math.erfc)
    upper = 0.5 * erfc((crit * s - ncp) / math.sqrt(2.0))      # P(Z + ncp > crit·s)
    lower = 0.5 * erfc((crit * s + ncp) / math.sqrt(2.0))      # P(Z + ncp < −crit·s)
    f = (upper + lower) * density
    return float(np.sum((s[1:] - s[:-1]) * (f[1:] + f[:-1]) / 2.0))


def paired_t_n(effect: float, alpha: float = 0.05, power: float = 0.8, n_max: int = 10_000) -> int:
    """The fewest pairs giving a two-sided paired t test at level `alpha` the `power` to detect a standardised
    effect `effect` (δ / σ_d)."""
    if effect <= 0:
        raise ValueError(f"effect must be > 0, got {effect}")
    for n in range(2, n_max + 1):
        if paired_t_power(effect, n, alpha) >= power:
            return n
    raise ValueError(f"more than {n_max} pairs needed for effect {effect}")
