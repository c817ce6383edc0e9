"""Stratified bootstrap of column means, drawn in blocks of index matrices."""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 20  # indices drawn at once: bounds memory for a large stratum


def stratified_bootstrap_means(
    columns: np.ndarray, strata: list[np.ndarray], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Column means of `columns` (N, C) over `n_boot` resamples, shape (n_boot, C).

    Each resample redraws the rows of every stratum (index arrays partitioning 0..N-1) with
    replacement, keeping its size, so the mix of strata is the same in every resample.
    """
    totals = np.zeros((columns.shape[1], n_boot))
    for rows in strata:
        block = columns[rows].T  # (C, m): summing the last axis keeps the reduction contiguous
        m = rows.size
        dtype = np.uint16 if m <= np.iinfo(np.uint16).max else np.int64  # smaller draws are faster
        step = max(1, _BLOCK // m)
        for start in range(0, n_boot, step):
            stop = min(start + step, n_boot)
            picks = rng.integers(0, m, size=(stop - start, m), dtype=dtype)  # (b, m)
            totals[:, start:stop] += np.take(block, picks, axis=1).sum(axis=2)  # (C, b, m) -> (C, b)
    return totals.T / columns.shape[0]


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile interval of 1-D bootstrap `samples`."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
