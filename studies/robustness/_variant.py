"""Per-variant statistics: each learning rate across seeds, then the variant across the grid."""

from __future__ import annotations

import math

import numpy as np

from studies.robustness._curves import expected_max, robust_range, success_auc
from studies.robustness._outcome import TrialTable
from studies.robustness._paired import t_interval
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
    diverged = int(table.diverged[rows].sum())
    worst = values[np.argmin(table.goodness_sign * values)] if has_values and not diverged else None
    mean_low, mean_high = t_interval(values)
    return LRStats(
        lr=lr,
        seeds_run=runs,
        failed=int(table.failed[rows].sum()),
        diverged=diverged,
        successes=successes,
        n_values=int(values.size),
        mean=float(np.mean(values)) if has_values else None,
        median=float(np.median(values)) if has_values else None,
        std=_std(values),
        worst=float(worst) if worst is not None else None,
        worst_diverged=diverged > 0,
        mean_ci_low=mean_low,
        mean_ci_high=mean_high,
        min=float(values.min()) if has_values else None,
        max=float(values.max()) if has_values else None,
        success_rate=rate,
        success_ci_low=low,
        success_ci_high=high,
        median_steps_to_threshold=float(np.median(steps)) if steps.size else None,
    )


def _at_best_lr(table: TrialTable, rows: np.ndarray) -> tuple[SeedValue | None, SeedSpread | None]:
    """The worst seed (a diverged one first: `rows` are sorted by seed) and the spread across seeds."""
    ran = rows[table.ran[rows]]
    diverged = ran[table.diverged[ran]]
    counted = ran[~np.isnan(table.value[ran])]
    values = table.value[counted]
    spread = None
    if values.size or diverged.size:
        spread = SeedSpread(
            max_minus_min=None if diverged.size or not values.size else float(values.max() - values.min()),
            std=_std(values),
            diverged=int(diverged.size),
        )
    if diverged.size:
        return SeedValue(seed=int(table.seed[diverged[0]]), value=None, diverged=True), spread
    if not values.size:
        return None, spread
    worst = int(np.argmin(table.goodness_sign * values))  # first minimum: the smallest seed among ties
    return SeedValue(seed=int(table.seed[counted[worst]]), value=float(values[worst])), spread


def _floored_means(table: TrialTable, cells: tuple[tuple[float, np.ndarray], ...]) -> np.ndarray:
    """Per lr that ran: the mean metric with each diverged run at the study's worst value (the worst
    any run reached); NaN where nothing ran or no run of the study has a value."""
    finite = table.value[~np.isnan(table.value)]
    if not finite.size:
        return np.full(len(cells), np.nan)
    floor = finite[np.argmin(table.goodness_sign * finite)]
    means = []
    for _, rows in cells:
        ran = rows[table.ran[rows]]
        values = np.where(table.diverged[ran], floor, table.value[ran])
        values = values[~np.isnan(values)]
        means.append(float(values.mean()) if values.size else np.nan)
    return np.array(means)


def _best_lr(per_lr: list[LRStats], sign: float) -> int | None:
    """Index of the lr with the highest success rate, then the best mean, then the smallest lr."""
    ran = [i for i, s in enumerate(per_lr) if s.success_rate is not None]
    if not ran:
        return None

    def key(i: int) -> tuple[float, float]:
        mean = per_lr[i].mean  # compared to 12 digits: means equal but for rounding are a tie
        return (per_lr[i].success_rate or 0.0, -math.inf if mean is None else float(f"{sign * mean:.12g}"))

    return max(ran, key=lambda i: (key(i), -i))


def variant_summary(table: TrialTable, code: int, robust_level: float) -> VariantSummary:
    """Summary of variant number `code` of `table`."""
    cells = table.by_lr[code]
    per_lr = [lr_stats(table, lr, rows) for lr, rows in cells]
    lrs = np.array([s.lr for s in per_lr])
    rates = np.array([np.nan if s.success_rate is None else s.success_rate for s in per_lr])
    runs = sum(s.seeds_run for s in per_lr)
    successes = sum(s.successes for s in per_lr)
    rate, low, high = _rate(successes, runs)
    robust = robust_range(lrs, rates, robust_level)
    lower_bounds = np.array([np.nan if s.success_ci_low is None else s.success_ci_low for s in per_lr])
    confident = robust_range(lrs, lower_bounds, robust_level)

    sign = table.goodness_sign
    best_lr = best_mean = worst_seed = spread = None
    best = _best_lr(per_lr, sign)
    if best is not None:
        best_lr, best_mean = float(lrs[best]), per_lr[best].mean
        worst_seed, spread = _at_best_lr(table, cells[best][1])
    floored = _floored_means(table, cells)
    floored = floored[~np.isnan(floored)]
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
        confidently_robust_lrs=confident.lrs,
        confidently_robust_lr_low=confident.low,
        confidently_robust_lr_high=confident.high,
        success_auc=success_auc(lrs, rates),
        expected_max_k=[sign * x for x in expected_max(sign * floored)],
    )
