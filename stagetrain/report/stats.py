"""Uncertainty over seeds, in pure Python: Student-t intervals of a mean and of a paired
difference, and the one-word verdict a comparison reports.

A verdict compares an arm with its control run by run, paired by seed (same seed, same
data split and initial draws where the arms share them): the mean of the per-seed
differences with its two-sided t-interval at ``level``. ``better`` when the whole interval
is above zero, ``worse`` when it is below, ``no evidence`` otherwise (including fewer than
two pairs). The t quantile comes from the regularised incomplete beta function (a
continued fraction), inverted by bisection: no SciPy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

LEVEL = 0.95
VERDICTS = ("better", "worse", "no evidence")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (e.g. p=0.975, df=4: 2.776)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Mean and the half-width of its two-sided t-interval (NaN with fewer than 2 values)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    half = t_quantile(0.5 + level / 2.0, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def paired(arm: dict[object, float], control: dict[object, float], level: float = LEVEL) -> dict[str, float]:
    """Arm minus control over the keys (seeds) both have: n, mean difference, its interval."""
    keys = sorted(set(arm) & set(control), key=str)
    diffs = [float(arm[k]) - float(control[k]) for k in keys]
    mean, half = mean_ci(diffs, level)
    return {"n": len(diffs), "diff": mean, "low": mean - half, "high": mean + half}


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """``better`` / ``worse`` when the interval of (arm - control) excludes zero, else ``no evidence``."""
    if math.isnan(low) or math.isnan(high):
        return "no evidence"
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "no evidence"
