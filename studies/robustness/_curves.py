"""Curves over the learning-rate grid: the robust range, the success AUC, Dodge's expected maximum."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class RobustRange(NamedTuple):
    lrs: list[float]
    low: float | None
    high: float | None
    width_decades: float | None
    contiguous: bool


def robust_range(lrs: np.ndarray, rates: np.ndarray, level: float) -> RobustRange:
    """Learning rates (sorted grid `lrs`) whose success rate (NaN = nothing ran) is >= `level`.

    The range is min..max of the qualifying lrs; `contiguous` says whether they are consecutive in
    the grid, an lr that has not run breaking the run.
    """
    with np.errstate(invalid="ignore"):
        robust = rates >= level  # NaN compares False
    positions = np.flatnonzero(robust)
    if positions.size == 0:
        return RobustRange([], None, None, None, False)
    low, high = float(lrs[positions[0]]), float(lrs[positions[-1]])
    contiguous = bool(positions[-1] - positions[0] + 1 == positions.size)
    return RobustRange([float(x) for x in lrs[positions]], low, high, math.log10(high / low), contiguous)


def success_auc(lrs: np.ndarray, rates: np.ndarray) -> float | None:
    """Area under success rate vs log10(lr), trapezoid rule, over lrs that ran, divided by their span."""
    ran = ~np.isnan(rates)
    x, y = np.log10(lrs[ran]), rates[ran]
    if x.size == 0:
        return None
    if x.size == 1:
        return float(y[0])
    area = np.sum((y[1:] + y[:-1]) / 2 * np.diff(x))
    return float(area / (x[-1] - x[0]))


def expected_max(values: np.ndarray, k_max: int | None = None) -> list[float]:
    """E[max of k draws with replacement from `values`] for k = 1..k_max (default n), Dodge et al. 2019.

    With v_(1) <= ... <= v_(n), E = sum_i v_(i) * ((i/n)^k - ((i-1)/n)^k). Pass values oriented so
    that larger is better (negate a lower-is-better metric, and the result).
    """
    v = np.sort(np.asarray(values, dtype=float))  # (n,)
    n = v.size
    if n == 0:
        return []
    k = np.arange(1, (n if k_max is None else k_max) + 1)[:, None]  # (K, 1)
    cdf = (np.arange(n + 1) / n)[None, :] ** k  # (K, n+1): P(max of k draws <= v_(i))
    return [float(x) for x in np.diff(cdf, axis=1) @ v]
