"""stats for the paired study (issue 23): t's p-values and quantiles, the paired t test, Holm, the endpoint's
area under the curve over KL, and the power calculation, each against hand-computed or published values."""

import math

import pytest

from frpo_workflow.stats import (auc, betainc, holm, paired_t_n, paired_t_power, paired_test, t_cdf, t_quantile,
                                 t_two_sided_p)


@pytest.mark.parametrize("t, df, p", [(12.7062, 1, 0.05), (4.3027, 2, 0.05), (2.2281, 10, 0.05),
                                      (2.0423, 30, 0.05), (2.7638, 10, 0.02), (0.0, 5, 1.0)])
def test_two_sided_p_at_published_t_quantiles(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-5)
    assert t_two_sided_p(-t, df) == pytest.approx(p, abs=2e-5)


def test_t_cdf_and_quantile_invert_each_other():
    assert t_cdf(0.0, 7) == pytest.approx(0.5)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-4)
    assert t_quantile(0.9875, 19) == pytest.approx(2.4334, abs=1e-4)  # α = 0.025 two-sided, 20 pairs
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    # I_x(1, 1) = x (uniform); I_x(a, 1) = x^a.
    assert betainc(1, 1, 0.3) == pytest.approx(0.3) and betainc(3, 1, 0.5) == pytest.approx(0.125)


def test_t_functions_match_scipy_where_it_is_installed():
    stats = pytest.importorskip("scipy.stats")
    for t, df in [(0.3, 1), (1.7, 3), (2.9, 23), (-4.1, 8), (6.0, 60)]:
        assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-12)
    for n, dz, alpha in [(10, 1.0, 0.05), (24, 0.706, 0.025), (5, 0.3, 0.05), (40, 0.45, 0.01)]:
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        exact = stats.nct.sf(crit, n - 1, dz * math.sqrt(n)) + stats.nct.cdf(-crit, n - 1, dz * math.sqrt(n))
        assert paired_t_power(dz, n, alpha) == pytest.approx(exact, abs=1e-6)


def test_paired_test_by_hand():
    # Per-seed differences 0.05, 0.00, 0.05, 0.10: mean 0.05, SD √(0.005/3) = 0.040825, SE 0.020412,
    # t = 2.4495 on 3 df, half-width t(0.975, 3)·SE = 3.1824 · 0.020412 = 0.064960, two-sided p 0.0917.
    a = {0: 0.90, 1: 0.80, 2: 0.85, 3: 0.95, 9: 0.5}  # seed 9 has no partner: left out
    b = {0: 0.85, 1: 0.80, 2: 0.80, 3: 0.85, 7: 0.1}
    test = paired_test(a, b)
    assert test.n == 4 and test.df == 3 and test.mean == pytest.approx(0.05)
    assert test.sd == pytest.approx(0.0408248, abs=1e-6) and test.t == pytest.approx(2.44949, abs=1e-4)
    assert test.half_width == pytest.approx(0.064960, abs=1e-5) and test.p == pytest.approx(0.09172, abs=1e-4)
    assert test.dz == pytest.approx(0.05 / 0.0408248, abs=1e-4)
    # Pairing by seed is not Welch: the same values unpaired have a wider interval (seed effects cancel).
    from frpo_workflow.stats import diff_ci

    assert diff_ci([0.90, 0.80, 0.85, 0.95], [0.85, 0.80, 0.80, 0.85]).half_width > test.half_width
    # A NaN on either side drops the seed; one pair has no interval; equal differences have no test.
    assert paired_test({0: 0.9, 1: math.nan}, {0: 0.8, 1: 0.7}).n == 1
    assert math.isnan(paired_test({0: 0.9}, {0: 0.8}).half_width)
    flat = paired_test({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.7})
    assert flat.half_width == 0.0 and math.isnan(flat.p) and math.isnan(flat.dz)
    assert paired_test({}, {0: 1.0}).n == 0


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 over m = 3: 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2·0.8 capped at 1; monotone after it
    # A test that could not be computed stays NaN but counts in the family's size.
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1])
    assert holm([]) == []


def test_auc_is_the_mean_over_kl_read_on_the_running_max():
    kl = [0.0, 1.0, 3.0, 2.0, 5.0]  # the estimate dips at step 3: the run had already reached 3
    refusal = [1.0, 0.8, 0.6, 0.7, 0.2]
    # Running max 0, 1, 3, 3, 5; to 4 nats: (1 + 0.8)/2·1 + (0.8 + 0.6)/2·2 + 0 (3 → 3) + (0.7 + 0.45)/2·1,
    # 0.45 being the value at 4 (between (3, 0.7) and (5, 0.2)): 0.9 + 1.4 + 0.575 = 2.875, over 4.
    assert auc(kl, refusal, 4.0) == pytest.approx(2.875 / 4)
    assert auc(kl, refusal, 1.0) == pytest.approx(0.9)
    assert auc(kl, [0.5] * 5, 5.0) == pytest.approx(0.5)  # a flat curve's mean is its value
    assert math.isnan(auc(kl, refusal, 5.5))  # never reached: no reading past where the run stopped
    assert auc([1.0, 2.0], [0.8, 0.6], 2.0) == pytest.approx((0.8 * 1 + 0.7 * 1) / 2)  # held from 0 at its first
    assert math.isnan(auc([0.0, 1.0, 2.0], [1.0, math.nan, 0.5], 2.0))  # a NaN on the way
    with pytest.raises(ValueError, match="upper must be > 0"):
        auc(kl, refusal, 0.0)


def test_power_and_sample_size_against_published_values():
    # G*Power, matched pairs, two-tailed α = 0.05: dz = 1 with 10 pairs has power 0.803; dz = 0.5 needs 34 pairs
    # for 0.8 (Cohen 1988's tables agree).
    assert paired_t_power(1.0, 10, 0.05) == pytest.approx(0.8031, abs=5e-4)
    assert paired_t_n(0.5, 0.05, 0.8) == 34
    assert paired_t_n(1.0, 0.05, 0.8) == 10
    # The preset's count: dz = 0.06 / 0.085 at α = 0.025 (Holm's first step over two tests) needs 22 seeds.
    assert paired_t_n(0.06 / 0.085, 0.025, 0.8) == 22
    assert paired_t_power(0.06 / 0.085, 24, 0.025) == pytest.approx(0.847, abs=2e-3)
    with pytest.raises(ValueError):
        paired_t_power(1.0, 1)
