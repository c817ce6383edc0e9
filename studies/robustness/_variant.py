"""Per-variant statistics: each learning rate across seeds, then the variant across the grid."""

from __future__ import annotations

import numpy as np

from studies.robustness._curves import expected_max, robust_range, success_auc
from studies.robustness._outcome import TrialTable
from studies.robustness._schema import LRStats, SeedSpread, SeedValue, VariantSummary
from studies.robustness._wilson import wilson_interval


def _rate(successes: int, runs: int) -> tuple[float | None, float | None, float | None]:
    if runs == 0:
        return None, None, None
    low, high = wilson_interval(successes, runs)
    return successes / runs, low, high


def _std(values: np.ndarray) -> float | None:
    return float(np.std(values, ddof=1)) if values.size >= 2 else None


def lr_stats(table: TrialTable, lr: float, rows: np.ndarray) -> LRStats:
    """Statistics of one (variant, lr) cell; `rows` index `table`."""
    values = table.value[rows]
    values = values[~np.isnan(values)]
    success = table.success[rows]
    steps = table.steps[rows][success]
    steps = steps[~np.isnan(steps)]
    runs, successes = int(table.ran[rows].sum()), int(success.sum())
    rate, low, high = _rate(successes, runs)
    has_values = values.size > 0
    worst = values[np.argmin(table.goodness_sign * values)] if has_values else None
    return LRStats(
        lr=lr,
        seeds_run=runs,
        failed=int(table.failed[rows].sum()),
        diverged=int(table.diverged[rows].sum()),
        successes=successes,
        n_values=int(values.size),
        mean=float(np.mean(values)) if has_values else None,
        median=float(np.median(values)) if has_values else None,
        std=_std(values),
        worst=float(worst) if worst is not None else None,
        min=float(values.min()) if has_values else None,
        max=float(values.max()) if has_values else None,
        success_rate=rate,
        success_ci_low=low,
        success_ci_high=high,
        median_steps_to_threshold=float(np.median(steps)) if steps.size else None,
    )


def _at_best_lr(table: TrialTable, rows: np.ndarray) -> tuple[SeedValue, SeedSpread]:
    values = table.value[rows]
    counted = rows[~np.isnan(values)]  # sorted by seed, so ties go to the smallest seed
    values = table.value[counted]
    worst = int(np.argmin(table.goodness_sign * values))
    spread = SeedSpread(max_minus_min=float(values.max() - values.min()), std=_std(values))
    return SeedValue(seed=int(table.seed[counted[worst]]), value=float(values[worst])), spread


def variant_summary(table: TrialTable, code: int, robust_level: float) -> VariantSummary:
    """Summary of variant number `code` of `table`."""
    cells = table.by_lr[code]
    per_lr = [lr_stats(table, lr, rows) for lr, rows in cells]
    lrs = np.array([s.lr for s in per_lr])
    rates = np.array([np.nan if s.success_rate is None else s.success_rate for s in per_lr])
    means = np.array([np.nan if s.mean is None else s.mean for s in per_lr])
    runs = sum(s.seeds_run for s in per_lr)
    successes = sum(s.successes for s in per_lr)
    rate, low, high = _rate(successes, runs)
    robust = robust_range(lrs, rates, robust_level)

    sign = table.goodness_sign
    has_mean = ~np.isnan(means)
    best_lr = best_mean = worst_seed = spread = None
    if has_mean.any():
        best = int(np.nanargmax(sign * means))  # first maximum: the smallest lr among ties
        best_lr, best_mean = float(lrs[best]), float(means[best])
        worst_seed, spread = _at_best_lr(table, cells[best][1])
    return VariantSummary(
        name=table.variants[code],
        p_detach=table.p_detach[code],
        runs=runs,
        successes=successes,
        diverged=sum(s.diverged for s in per_lr),
        failed=sum(s.failed for s in per_lr),
        lrs=per_lr,
        success_rate=rate,
        success_ci_low=low,
        success_ci_high=high,
        best_lr=best_lr,
        best_mean=best_mean,
        worst_seed_at_best_lr=worst_seed,
        seed_spread_at_best_lr=spread,
        robust_lrs=robust.lrs,
        robust_lr_low=robust.low,
        robust_lr_high=robust.high,
        robust_width_decades=robust.width_decades,
        robust_contiguous=robust.contiguous,
        success_auc=success_auc(lrs, rates),
        expected_max_k=[sign * x for x in expected_max(sign * means[has_mean])],
    )
