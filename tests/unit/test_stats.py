"""stats: t quantiles against published values, mean ± CI, reading a run at a KL level, the common grid."""

import math

import pytest

import numpy as np

from frpo_workflow.stats import diff_ci, grid_estimates, mean_ci, t_quantile_975, unit_means, value_at


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423),
                                   # beyond the table: the expansion against published quantiles
                                   (31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799), (10_000, 1.9602)])
def test_t_quantile_matches_published_values(df, t):
    assert t_quantile_975(df) == pytest.approx(t, abs=6e-4)


def test_t_quantile_needs_a_degree_of_freedom():
    with pytest.raises(ValueError, match="at least 1 degree"):
        t_quantile_975(0)


def test_mean_ci_is_the_student_t_interval():
    est = mean_ci([0.70, 0.72, 0.73])
    # mean 0.71667, s = 0.015275, t(0.975, 2) = 4.3027: half-width 4.3027 · 0.015275 / √3 = 0.037946
    assert est.n == 3 and est.mean == pytest.approx(0.716667, abs=1e-6)
    assert est.half_width == pytest.approx(0.037946, abs=1e-5)
    assert (est.low, est.high) == pytest.approx((0.678721, 0.754613), abs=1e-5)


def test_one_run_has_no_interval_and_nan_values_do_not_count():
    est = mean_ci([0.4, math.nan])
    assert est.n == 1 and est.mean == 0.4 and math.isnan(est.half_width)
    empty = mean_ci([math.nan])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_value_at_interpolates_at_the_first_crossing_of_the_running_max():
    kl = [0.0, 1.0, 3.0, 2.0, 5.0]  # the estimate dips at step 3: the run had already reached 3
    refusal = [0.9, 0.8, 0.6, 0.7, 0.2]
    assert value_at(kl, refusal, 0.0) == pytest.approx(0.9)
    assert value_at(kl, refusal, 2.0) == pytest.approx(0.7)  # halfway between 1 (0.8) and 3 (0.6)
    assert value_at(kl, refusal, 3.0) == pytest.approx(0.6)
    # Between 3 and 5 the running max is 3, 3, 5: read between the last point at 3 (0.7) and 5 (0.2).
    assert value_at(kl, refusal, 4.0) == pytest.approx(0.45)
    assert math.isnan(value_at(kl, refusal, 5.5))  # never reached
    assert math.isnan(value_at([0.3, 0.5], [1.0, 0.9], 0.1))  # starts above the level (a task score)


def test_grid_estimates_need_two_runs_unless_there_is_only_one():
    near = ([0.0, 1.0], [1.0, 0.8])
    far = ([0.0, 4.0], [1.0, 0.2])
    at_half, at_two = grid_estimates([near, far], [0.5, 2.0])
    assert at_half.n == 2 and at_half.mean == pytest.approx((0.9 + 0.9) / 2)
    assert at_two.n == 1 and math.isnan(at_two.mean)  # only the far run gets there: no mean
    (alone,) = grid_estimates([far], [2.0])
    assert alone.n == 1 and alone.mean == pytest.approx(0.6) and math.isnan(alone.half_width)


def test_units_average_their_values_before_the_interval():
    # Two alignment seeds with two fine-tunes each: the interval is over the seeds' means (n = 2), not
    # over four runs, which would count one aligned model's fine-tunes as independent evidence.
    values, units = [0.9, 0.8, 0.5, 0.6], [0, 0, 1, 1]
    assert unit_means(values, units).tolist() == pytest.approx([0.85, 0.55])
    est = mean_ci(values, units)
    assert est.n == 2 and est.mean == pytest.approx(0.70)
    assert est.half_width == pytest.approx(12.7062 * np.std([0.85, 0.55], ddof=1) / math.sqrt(2))
    assert mean_ci(values).half_width < est.half_width  # treating runs as units claims more than is known
    # A seed whose runs are all NaN (none reached a KL level) is left out, one with a value keeps it.
    assert unit_means([math.nan, math.nan, 0.4, math.nan], units).tolist() == pytest.approx([0.4])
    with pytest.raises(ValueError, match="3 unit labels for 4 values"):
        unit_means(values, [0, 0, 1])


def test_diff_ci_is_welchs_interval():
    a, b = [0.90, 0.92, 0.94], [0.80, 0.85, 0.90, 0.95]
    est = diff_ci(a, b)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)  # 3.37: t at 3 degrees of freedom
    assert int(df) == 3 and est.n == 3 and est.mean == pytest.approx(0.92 - 0.875)
    assert est.half_width == pytest.approx(3.1824 * math.sqrt(va + vb))
    assert math.isnan(diff_ci([0.9], b).half_width) and diff_ci([0.9], b).n == 1  # one value: no interval
    assert diff_ci([0.5, 0.5], [0.4, 0.4]).half_width == 0.0  # no spread on either side
    assert diff_ci([], b).n == 0


def test_grid_estimates_need_every_run_to_reach_a_level():
    near = ([0.0, 1.0], [1.0, 0.8])
    far = ([0.0, 4.0], [1.0, 0.2])
    # Seed 0 has a near and a far run, seed 1 one far run: at 2 nats seed 0's near run has stopped, so a
    # mean there would read seed 0 by its furthest run alone (survivorship): no mean, n counts the units
    # that have a value.
    (at_two,) = grid_estimates([near, far, far], [2.0], units=[0, 0, 1])
    assert at_two.n == 2 and math.isnan(at_two.mean)
    (only_one,) = grid_estimates([near, far, near], [2.0], units=[0, 0, 1])
    assert only_one.n == 1 and math.isnan(only_one.mean)  # one seed of two reaches it: no mean
    (every,) = grid_estimates([far, far, far], [2.0], units=[0, 0, 1])  # every run gets there
    assert every.n == 2 and every.mean == pytest.approx(0.6)
    (at_one,) = grid_estimates([near, far, near], [1.0], units=[0, 0, 1])
    assert at_one.n == 2 and at_one.mean == pytest.approx(((0.8 + 0.8) / 2 + 0.8) / 2)
