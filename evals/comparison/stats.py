"""Statistics over replicate seeds, all from scipy: the sample mean and std (ddof = 1), a 95%
t-interval, Welch's t-test against a baseline group, and a power estimate (seeds per group needed
to detect a difference at the observed spread), for the report's headline and verdicts.

With n seeds the interval is mean +- t(0.975, n - 1) * std / sqrt(n); with 2 seeds t = 12.7, so
the interval is wide by construction: 2 seeds can only show large differences.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # power search limit: beyond it the report says "more than 1000"


@dataclass
class Describe:
    """Mean, sample std and 95% t-interval of one metric over a group's seeds (non-finite values dropped)."""

    n: int
    mean: float
    std: float  # ddof = 1; nan with one value
    ci_low: float  # nan with one value (no interval from one seed)
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def describe(values) -> Describe:
    a = finite(values)
    nan = float("nan")
    if len(a) == 0:
        return Describe(0, nan, nan, nan, nan)
    mean = float(a.mean())
    if len(a) == 1:
        return Describe(1, mean, nan, nan, nan)
    std = float(np.std(a, ddof=1))
    if std == 0.0:  # scipy needs scale > 0; identical values have a zero-width interval
        return Describe(len(a), mean, 0.0, mean, mean)
    low, high = stats.t.interval(CONFIDENCE, len(a) - 1, loc=mean, scale=stats.sem(a))
    return Describe(len(a), mean, std, float(low), float(high))


@dataclass
class Welch:
    """Welch's t-test of group - baseline (unequal variances)."""

    diff: float  # mean(group) - mean(baseline)
    ci_low: float  # 95% interval of the difference (Welch-Satterthwaite df)
    ci_high: float
    p: float  # two-sided; nan when it cannot be computed (a group with < 2 seeds, or neither group has spread)
    n: int
    n_baseline: int

    def to_dict(self) -> dict:
        return asdict(self)


def welch(values, baseline) -> Welch:
    a, b = finite(values), finite(baseline)
    nan = float("nan")
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else nan
    if len(a) < 2 or len(b) < 2:
        return Welch(diff, nan, nan, nan, len(a), len(b))
    if np.std(a) == 0 and np.std(b) == 0:  # no spread in either group: the t statistic is undefined
        return Welch(diff, nan, nan, nan, len(a), len(b))
    with warnings.catch_warnings():  # one group without spread (e.g. spike counts 2, 2) is a valid Welch test
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return Welch(diff, float(ci.low), float(ci.high), float(res.pvalue), len(a), len(b))


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided two-sample t-test with n seeds per group, true difference `effect`,
    common std `sd` (noncentral t distribution)."""
    if n < 2 or sd <= 0:
        return float("nan")
    df = 2 * n - 2
    nc = abs(effect) / (sd * math.sqrt(2.0 / n))
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    lower = stats.nct.cdf(-t_crit, df, nc)  # the wrong-sign tail: nan from scipy where it underflows
    return float(stats.nct.sf(t_crit, df, nc) + (lower if math.isfinite(lower) else 0.0))


def seeds_needed(effect: float, sd: float, target: float = POWER, alpha: float = ALPHA) -> int | None:
    """Smallest seeds per group for `target` power to detect `effect` at spread `sd`; None past MAX_SEEDS
    (or when it cannot be estimated: no effect or no spread)."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0 or sd <= 0:
        return None
    lo, hi = 2, MAX_SEEDS
    if power(effect, sd, hi, alpha) < target:
        return None
    while lo < hi:  # power grows with n
        mid = (lo + hi) // 2
        if power(effect, sd, mid, alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def pooled_sd(values, baseline) -> float:
    """sqrt of the mean of the two sample variances (the spread both groups show)."""
    a, b = finite(values), finite(baseline)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)


def format_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.01 else f"p = {p:.2f}"
