"""stats: t quantiles against published values, mean ± CI, reading a run at a KL level, the common grid."""

import math

import pytest

from frpo_workflow.stats import grid_estimates, mean_ci, t_quantile_975, value_at


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
