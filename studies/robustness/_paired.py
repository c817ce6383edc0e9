"""A variant against the baseline, paired on (lr, seed)."""

from __future__ import annotations

import numpy as np

from studies.robustness._bootstrap import percentile_interval, stratified_bootstrap_means
from studies.robustness._outcome import TrialTable
from studies.robustness._schema import Comparison


def _rows_by_key(table: TrialTable, code: int) -> dict[tuple[float, int], int]:
    return {(lr, int(table.seed[i])): int(i) for lr, rows in table.by_lr[code] for i in rows}


def _strata(lrs: np.ndarray) -> list[np.ndarray]:
    """Indices of `lrs` grouped by learning rate."""
    order = np.argsort(lrs, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(lrs[order])) + 1) if lrs.size else []


def _wilcoxon_p(differences: np.ndarray) -> float | None:
    if np.count_nonzero(differences) < 2:
        return None
    from scipy.stats import wilcoxon  # scipy.stats takes a second to import: load it on first use

    return float(wilcoxon(differences, alternative="two-sided").pvalue)


def compare(
    table: TrialTable,
    variant: int,
    baseline: int,
    success_rates: tuple[float | None, float | None],
    n_boot: int,
    seed: int,
) -> Comparison:
    """Paired comparison of variant number `variant` with number `baseline`.

    `success_rates` are the (variant, baseline) overall success rates. Each comparison draws from
    its own `default_rng(seed)`, so adding a variant leaves the other comparisons unchanged.
    """
    base_rows = _rows_by_key(table, baseline)
    pairs = [(v, base_rows[key]) for key, v in _rows_by_key(table, variant).items() if key in base_rows]
    paired = np.array(pairs, dtype=np.int64).reshape(-1, 2)  # (P, 2): variant row, baseline row
    v_rows, b_rows = paired[:, 0], paired[:, 1]
    both_ran = table.ran[v_rows] & table.ran[b_rows]
    v_div, b_div = table.diverged[v_rows], table.diverged[b_rows]
    # positive = variant better, in either direction of the metric
    diff = table.goodness_sign * (table.value[v_rows] - table.value[b_rows])
    counted = both_ran & ~np.isnan(diff)
    diff, lrs = diff[counted], table.lr[v_rows][counted]
    score = (diff > 0) + 0.5 * (diff == 0)  # a win counts 1, a tie 1/2

    mean_ci: tuple[float | None, float | None] = (None, None)
    win_ci = mean_ci
    strata = _strata(lrs)
    if any(rows.size >= 2 for rows in strata):  # otherwise every resample equals the sample
        boot = stratified_bootstrap_means(
            np.column_stack([diff, score]), strata, n_boot, np.random.default_rng(seed)
        )
        mean_ci, win_ci = percentile_interval(boot[:, 0]), percentile_interval(boot[:, 1])
    v_rate, b_rate = success_rates
    return Comparison(
        variant=table.variants[variant],
        baseline=table.variants[baseline],
        n_pairs=int(diff.size),
        pairs_excluded=int(both_ran.sum() - diff.size),
        only_variant_diverged=int((both_ran & v_div & ~b_div).sum()),
        only_baseline_diverged=int((both_ran & b_div & ~v_div).sum()),
        mean_difference=float(diff.mean()) if diff.size else None,
        mean_difference_ci_low=mean_ci[0],
        mean_difference_ci_high=mean_ci[1],
        prob_improvement=float(score.mean()) if diff.size else None,
        prob_improvement_ci_low=win_ci[0],
        prob_improvement_ci_high=win_ci[1],
        wilcoxon_p=_wilcoxon_p(diff),
        success_rate_difference=None if v_rate is None or b_rate is None else v_rate - b_rate,
    )
