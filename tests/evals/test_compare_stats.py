"""evals.comparison.stats against scipy (and textbook values) on known inputs."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from evals.comparison.stats import describe, format_p, pooled_sd, power, seeds_needed, welch

A = [5.10, 5.16, 5.13, 5.19]
B = [5.30, 5.21, 5.26]


def test_describe_is_the_sample_std_and_a_95_t_interval():
    d = describe(A)
    assert d.n == 4 and d.mean == pytest.approx(np.mean(A))
    assert d.std == pytest.approx(np.std(A, ddof=1)) and d.std != pytest.approx(np.std(A))  # not the population std
    low, high = stats.t.interval(0.95, 3, loc=np.mean(A), scale=stats.sem(A))
    assert (d.ci_low, d.ci_high) == (pytest.approx(low), pytest.approx(high))
    # by hand: t(0.975, 3) = 3.182446
    assert d.half_width == pytest.approx(3.182446 * np.std(A, ddof=1) / 2, rel=1e-6)


def test_two_seeds_have_a_wide_interval_and_one_seed_none():
    two = describe([1.0, 2.0])
    assert two.std == pytest.approx(math.sqrt(0.5))
    assert two.half_width == pytest.approx(12.7062 * 0.5, rel=1e-4)  # t(0.975, 1) x sem
    one = describe([3.0])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_describe_drops_non_finite_values_and_handles_no_spread():
    d = describe([1.0, float("nan"), 3.0, float("inf")])
    assert d.n == 2 and d.mean == 2.0
    flat = describe([2.0, 2.0, 2.0])
    assert flat.std == 0.0 and flat.ci_low == flat.ci_high == 2.0
    assert describe([]).n == 0 and math.isnan(describe([]).mean)


def test_welch_matches_scipy():
    w = welch(A, B)
    ref = stats.ttest_ind(A, B, equal_var=False)
    assert w.diff == pytest.approx(np.mean(A) - np.mean(B))
    assert w.p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (w.ci_low, w.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # Welch-Satterthwaite by hand
    va, vb = np.var(A, ddof=1) / 4, np.var(B, ddof=1) / 3
    t = (np.mean(A) - np.mean(B)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    assert w.p == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert (w.n, w.n_baseline) == (4, 3)


def test_welch_without_enough_seeds_or_spread_has_no_p_value():
    one = welch([5.0], B)
    assert math.isnan(one.p) and one.diff == pytest.approx(5.0 - np.mean(B))
    assert math.isnan(welch([1.0, 1.0], [0.0, 0.0]).p)  # no spread on either side: t undefined
    part = welch([2.0, 3.0], [2.0, 2.0])  # one side without spread: still a Welch test (df from the other)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's "nearly identical data" note
        assert part.p == pytest.approx(stats.ttest_ind([2.0, 3.0], [2.0, 2.0], equal_var=False).pvalue)


def test_power_matches_the_noncentral_t_and_the_seed_estimate_is_minimal():
    # n = 10 per group, d = 1: power 0.5620 (Cohen's tables / G*Power for a two-sided t-test, alpha 0.05)
    assert power(1.0, 1.0, 10) == pytest.approx(0.5620, abs=5e-4)
    n = seeds_needed(1.0, 1.0)
    assert n == 17  # d = 1, 80% power: 17 per group (Cohen 1988)
    assert power(1.0, 1.0, n) >= 0.8 > power(1.0, 1.0, n - 1)
    assert seeds_needed(0.05, 0.03) == 7  # the example scale: delta 0.05 at std 0.03
    assert seeds_needed(1e-4, 1.0) is None  # beyond the search limit
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(0.1, 0.0) is None


def test_pooled_sd_and_p_formatting():
    assert pooled_sd(A, B) == pytest.approx(math.sqrt((np.var(A, ddof=1) + np.var(B, ddof=1)) / 2))
    assert math.isnan(pooled_sd([1.0], B))
    assert format_p(0.2187) == "p = 0.22" and format_p(0.0042) == "p = 0.0042" and format_p(1e-5) == "p < 0.001"
    assert format_p(float("nan")) == "n/a"
